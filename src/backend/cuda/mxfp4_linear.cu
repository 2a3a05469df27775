// MXFP4 kernels (see mxfp4_linear.h): the load-time re-layout of codes and scales, the
// tensor-core decode kernel, the exact dequantize kernel and the dispatcher.
//
// Code layout, per expert: tiles[n16][k64][lane][word j], word j covering the 16×16
// sub-tile j (inputs 16j..16j+15 of the piece). With g = lane/4, t = lane%4, the m16n8k16
// A fragment register r (0..3) of a lane holds row g + 8·(r&1), inputs 2t + 8·(r>>1) + h
// for h = 0 (low bf16) and 1 (high bf16). In word j, the code of (r, h) is split into
//   bits 3r + 16h .. +2:  its exponent and mantissa bits (e1 e0 m)
//   bit  12 + r + 16h:    its sign
// so one shift puts (e1 e0 m) of both halves at bf16 bits 8..6 and 24..22, another the
// signs at bits 15 and 31: those bf16 numbers are the e2m1 values times 2^-126 (e = 0
// lands in bf16's subnormals, as 0.5 is e2m1's), and one bf16 multiply by 2^126 makes them
// exact. Scale layout: scales[n16][k64][g] one 32-bit word, bytes (row g, group 0), (row
// g+8, group 0), (row g, group 1), (row g+8, group 1) of the piece's two 32-input groups.
#include "backend/cuda/mxfp4_linear.h"

#include <algorithm>
#include <memory>

#include "backend/cuda/bf16_linear.h"
#include "backend/cuda/dependent_launch.h"
#include "backend/cuda/int4_mma.cuh"

namespace dsq::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps, each a K slice of one 16-row tile
constexpr int kChunk = 64;     // inputs per 16-byte lane word
constexpr int kMaxItems = 256;

struct WorkItem {
  int expert;
  int row_begin;
  int rows;  // 1..8
};
// Passed by value as a kernel parameter (3 KB), so a launch needs no host-to-device copy.
struct WorkList {
  WorkItem items[kMaxItems];
};

// Fragment register r of a code word as bf16x2, exactly (file comment).
__device__ __forceinline__ uint32_t e2m1_pair_to_bf16x2(uint32_t word, int r) {
  const uint32_t magnitude = (r < 2 ? word << (6 - 3 * r) : word >> (3 * r - 6)) & 0x01C001C0u;
  const uint32_t sign = (word << (3 - r)) & 0x80008000u;
  const uint32_t bits = magnitude | sign;
  const uint32_t two_pow_126 = 0x7E807E80u;
  const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&bits),
                                   *reinterpret_cast<const __nv_bfloat162*>(&two_pow_126));
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 2^(e-127) as fp32 (e = 0: the subnormal 2^-127; 255: NaN), as dsq::e8m0_to_f32.
__device__ __forceinline__ float e8m0_to_float(uint32_t e) {
  const uint32_t bits = e == 0 ? 0x00400000u : e == 255 ? 0x7FC00000u : e << 23;
  return __uint_as_float(bits);
}

// A block per (16-row tile of W, item): 8 warps take consecutive 64·CH-wide K slices
// (rounds of 8 slices where K is longer), each staging its own slice of the item's rows
// of x, then add their partial sums in shared memory in warp order; warp 0 stores. A
// programmatic dependent (dependent_launch.h): the first round's codes and scales load
// before waiting for the kernel that wrote x.
template <int CH>
__global__ void __launch_bounds__(kThreads)
    mxfp4_decode_kernel(const uint4* __restrict__ tiles, const uint32_t* __restrict__ scales,
                        const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int N, int K, int row_cap,
                        const __grid_constant__ WorkList work) {
  constexpr int kSlice = CH * kChunk;
  constexpr int kRowStride = kSlice + 8;  // +16 bytes: conflict-free fragment reads
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float4* sums = reinterpret_cast<float4*>(smem_raw);  // [8 warps][32 lanes]
  allow_dependent_launch();

  const WorkItem item = work.items[blockIdx.y];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ntile = blockIdx.x, g = lane / 4, t = lane % 4;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw + kThreads * sizeof(float4)) +
                      warp * row_cap * kRowStride;
  const int rounds = K / (8 * kSlice);
  const size_t piece0 = (size_t(item.expert) * (N / 16) + ntile) * (K / kChunk);  // first piece of the tile
  int k0 = warp * kSlice;
  uint4 wv[CH];
  uint32_t sv[CH];
  const auto load = [&] {
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const size_t piece = piece0 + k0 / kChunk + c;
      wv[c] = __ldcs(tiles + piece * 32 + lane);
      sv[c] = __ldcs(scales + piece * 8 + g);
    }
  };
  load();
  wait_for_previous_kernel();  // x is written, and whoever read y before is done
  float acc[4] = {};
  // Lanes past the item's rows read its last row and select zero (int4_mma.cuh: keeps
  // the shared-memory loads unconditional).
  const bool valid = g < item.rows;
  const __nv_bfloat16* xrow = xs + min(g, item.rows - 1) * kRowStride + 2 * t;
  for (int round = 0;;) {
    for (int i = lane; i < item.rows * (kSlice / 8); i += 32) {
      const int r = i / (kSlice / 8), c = i % (kSlice / 8);
      *reinterpret_cast<uint4*>(xs + r * kRowStride + c * 8) =
          *reinterpret_cast<const uint4*>(x + size_t(item.row_begin + r) * K + k0 + c * 8);
    }
    __syncwarp();
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const uint32_t words[4] = {wv[c].x, wv[c].y, wv[c].z, wv[c].w};
#pragma unroll
      for (int group = 0; group < 2; ++group) {
        float part[4] = {};
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const int j = 2 * group + jj;
          uint32_t a[4];
#pragma unroll
          for (int r = 0; r < 4; ++r) a[r] = e2m1_pair_to_bf16x2(words[j], r);
          const __nv_bfloat16* row = xrow + c * kChunk + j * 16;
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(row);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(row + 8);
          mma_bf16_16816(part, a, valid ? b0 : 0u, valid ? b1 : 0u);
        }
        const float s_lo = e8m0_to_float((sv[c] >> (16 * group)) & 0xFF);
        const float s_hi = e8m0_to_float((sv[c] >> (16 * group + 8)) & 0xFF);
        acc[0] += part[0] * s_lo;
        acc[1] += part[1] * s_lo;
        acc[2] += part[2] * s_hi;
        acc[3] += part[3] * s_hi;
      }
    }
    if (++round == rounds) break;
    __syncwarp();  // every lane has read xs before it is restaged
    k0 += 8 * kSlice;
    load();
  }
  sums[threadIdx.x] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  if (warp != 0) return;
  store_summed_tile(sums, kThreads / 32, lane, ntile, item.rows, item.row_begin, N, y);
}

// Row and input (within the 16×64 piece) of code (word j, register r, half h) of a lane.
__device__ __forceinline__ int code_row(int g, int r) { return g + (r & 1) * 8; }
__device__ __forceinline__ int code_col(int t, int j, int r, int h) { return j * 16 + 2 * t + (r >> 1) * 8 + h; }

// One thread per code word: gathers its 8 codes from the checkpoint bytes [E·N][K/2].
__global__ void mxfp4_relayout_kernel(const uint8_t* __restrict__ values, int K, size_t words,
                                      uint32_t* __restrict__ tiles) {
  const size_t o = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= words) return;
  const int j = int(o % 4), lane = int((o / 4) % 32);
  const size_t piece = o / 128;  // (expert · N/16 + n16) · K/64 + k64
  const int chunk = int(piece % (K / kChunk));
  const size_t tile_row0 = piece / (K / kChunk) * 16;  // expert-major rows
  const int g = lane / 4, t = lane % 4;
  uint32_t word = 0;
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int col = chunk * kChunk + code_col(t, j, r, h);
      const uint8_t byte = values[(tile_row0 + code_row(g, r)) * (K / 2) + col / 2];
      const uint32_t code = (col & 1) ? byte >> 4 : byte & 0xF;
      word |= (code & 7u) << (3 * r + 16 * h);
      word |= (code >> 3) << (12 + r + 16 * h);
    }
  tiles[o] = word;
}

// One thread per scale word (piece, g): the four scale bytes of rows g, g+8 of the piece.
__global__ void mxfp4_scale_relayout_kernel(const uint8_t* __restrict__ scales, int K, size_t words,
                                            uint32_t* __restrict__ out) {
  const size_t o = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= words) return;
  const int g = int(o % 8);
  const size_t piece = o / 8;
  const int chunk = int(piece % (K / kChunk));
  const size_t row0 = piece / (K / kChunk) * 16 + g;
  const uint8_t* s = scales + row0 * (K / 32) + 2 * chunk;
  const size_t next = size_t(8) * (K / 32);  // row g + 8
  out[o] = uint32_t(s[0]) | uint32_t(s[next]) << 8 | uint32_t(s[1]) << 16 | uint32_t(s[next + 1]) << 24;
}

// One thread per lane word of one expert: writes its 32 values as bf16 (exact).
__global__ void mxfp4_dequant_kernel(const uint4* __restrict__ tiles, const uint32_t* __restrict__ scales,
                                     int expert, int N, int K, __nv_bfloat16* __restrict__ out) {
  const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t per_expert = size_t(N / 16) * (K / kChunk) * 32;
  if (idx >= per_expert) return;
  const int lane = int(idx % 32), g = lane / 4, t = lane % 4;
  const size_t piece = idx / 32;  // within the expert
  const int chunk = int(piece % (K / kChunk));
  const int ntile = int(piece / (K / kChunk));
  const size_t global_piece = size_t(expert) * (N / 16) * (K / kChunk) + piece;
  const uint4 v = tiles[global_piece * 32 + lane];
  const uint32_t sw = scales[global_piece * 8 + g];
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      const uint32_t pair = e2m1_pair_to_bf16x2(words[j], r);
      const float s = e8m0_to_float((sw >> (8 * ((r & 1) + 2 * (j / 2)))) & 0xFF);
      const int row = ntile * 16 + code_row(g, r);
      const int col = chunk * kChunk + code_col(t, j, r, 0);
      const __nv_bfloat162 q = *reinterpret_cast<const __nv_bfloat162*>(&pair);
      *reinterpret_cast<__nv_bfloat162*>(out + size_t(row) * K + col) =
          __floats2bfloat162_rn(__low2float(q) * s, __high2float(q) * s);
    }
}

template <int CH>
void launch_decode(const GpuContext& ctx, const Mxfp4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                   const WorkList& work, int count, int row_cap) {
  constexpr size_t kPerRow = size_t(kThreads / 32) * (CH * kChunk + 8) * sizeof(__nv_bfloat16);
  static bool configured = false;  // the attribute belongs to the function: set it once, for 8 rows
  if (!configured) {
    DSQ_CUDA_CHECK(cudaFuncSetAttribute(mxfp4_decode_kernel<CH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(kThreads * sizeof(float4) + 8 * kPerRow)));
    configured = true;
  }
  const dim3 grid(unsigned(w.rows() / 16), unsigned(count));
  launch_dependent(ctx, mxfp4_decode_kernel<CH>, grid, dim3(kThreads), kThreads * sizeof(float4) + row_cap * kPerRow,
                   w.tiles(), w.scales(), x, y, int(w.rows()), int(w.cols()), row_cap, work);
}

// The decode kernel's slice per warp in 64-wide chunks: K / 512 when that is 1, 2, 4 or 8
// (one round: all of a block's codes in flight at once), else the largest of those
// dividing it.
int decode_chunks(int64_t K) {
  for (int ch : {8, 4, 2})
    if ((K / 512) % ch == 0) return ch;
  return 1;
}

void run_decode(const GpuContext& ctx, const Mxfp4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                const std::vector<WorkItem>& items) {
  auto work = std::make_unique<WorkList>();
  const int chunks = decode_chunks(w.cols());
  for (size_t begin = 0; begin < items.size(); begin += kMaxItems) {
    const int count = int(std::min<size_t>(kMaxItems, items.size() - begin));
    int row_cap = 0;
    for (int i = 0; i < count; ++i) {
      work->items[i] = items[begin + i];
      row_cap = std::max(row_cap, items[begin + i].rows);
    }
    if (chunks == 1) launch_decode<1>(ctx, w, x, y, *work, count, row_cap);
    else if (chunks == 2) launch_decode<2>(ctx, w, x, y, *work, count, row_cap);
    else if (chunks == 4) launch_decode<4>(ctx, w, x, y, *work, count, row_cap);
    else launch_decode<8>(ctx, w, x, y, *work, count, row_cap);
  }
}

unsigned blocks_for(size_t n) { return unsigned((n + 255) / 256); }

}  // namespace

Mxfp4ExpertWeights::Mxfp4ExpertWeights(const uint8_t* values, const uint8_t* scales, int64_t E, int64_t N, int64_t K,
                                       const std::string& what)
    : E_(E), N_(N), K_(K) {
  DSQ_CHECK(E > 0 && fits(N, K), what, ": the MXFP4 kernels need [", N, ", ", K,
            "] with out-features divisible by 16 and in-features by 512 (", E, " experts)");
  // The re-layout runs on the GPU: a whole model's experts take seconds on a CPU.
  const size_t code_words = size_t(E * N * K / 8), scale_words = size_t(E * N / 16 * K / kChunk * 8);
  {
    auto source = DeviceBuffer<uint8_t>::from_host(values, size_t(E * N * K / 2));
    tiles_ = DeviceBuffer<uint4>(code_words / 4);
    mxfp4_relayout_kernel<<<blocks_for(code_words), 256>>>(source.get(), int(K), code_words,
                                                           reinterpret_cast<uint32_t*>(tiles_.get()));
    DSQ_CUDA_CHECK_LAUNCH();
    DSQ_CUDA_CHECK(cudaDeviceSynchronize());  // `source` is freed at the end of the block
  }
  auto source = DeviceBuffer<uint8_t>::from_host(scales, size_t(E * N * K / 32));
  scales_ = DeviceBuffer<uint32_t>(scale_words);
  mxfp4_scale_relayout_kernel<<<blocks_for(scale_words), 256>>>(source.get(), int(K), scale_words, scales_.get());
  DSQ_CUDA_CHECK_LAUNCH();
  DSQ_CUDA_CHECK(cudaDeviceSynchronize());
}

void mxfp4_dequantize_expert(const GpuContext& ctx, const Mxfp4ExpertWeights& w, int64_t expert,
                             __nv_bfloat16* out) {
  DSQ_CHECK(expert >= 0 && expert < w.experts(), "mxfp4_dequantize_expert: expert ", expert, " out of range [0, ",
            w.experts(), ")");
  const size_t words = size_t(w.rows() / 16) * (w.cols() / kChunk) * 32;
  mxfp4_dequant_kernel<<<blocks_for(words), 256, 0, ctx.stream()>>>(w.tiles(), w.scales(), int(expert),
                                                                     int(w.rows()), int(w.cols()), out);
  DSQ_CUDA_CHECK_LAUNCH();
}

void mxfp4_grouped_linear(const GpuContext& ctx, const Mxfp4ExpertWeights& w, const __nv_bfloat16* x,
                          const std::vector<int64_t>& offsets, float* y, __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(int64_t(offsets.size()) == w.experts() + 1, "mxfp4_grouped_linear: ", offsets.size(),
            " offsets for ", w.experts(), " experts (need experts + 1)");
  DSQ_CHECK(offsets.front() == 0, "mxfp4_grouped_linear: offsets must start at 0");
  std::vector<WorkItem> items;
  for (int64_t e = 0; e < w.experts(); ++e) {
    const int64_t begin = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - begin;
    DSQ_CHECK(rows >= 0, "mxfp4_grouped_linear: offsets decrease at expert ", e);
    if (rows > kMxfp4DecodeMaxRows && dequant_scratch) {
      mxfp4_dequantize_expert(ctx, w, e, dequant_scratch);
      bf16_linear_f32_out(ctx, x + begin * w.cols(), dequant_scratch, y + begin * w.rows(), rows, w.rows(),
                          w.cols());
      continue;
    }
    for (int64_t r = 0; r < rows; r += kMxfp4DecodeMaxRows)
      items.push_back({int(e), int(begin + r), int(std::min<int64_t>(kMxfp4DecodeMaxRows, rows - r))});
  }
  if (!items.empty()) run_decode(ctx, w, x, y, items);
}

void mxfp4_linear(const GpuContext& ctx, const Mxfp4ExpertWeights& w, int64_t expert, const __nv_bfloat16* x,
                  int64_t M, float* y, __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(expert >= 0 && expert < w.experts(), "mxfp4_linear: expert ", expert, " out of range");
  std::vector<int64_t> offsets(size_t(w.experts() + 1), 0);
  for (int64_t e = expert + 1; e <= w.experts(); ++e) offsets[size_t(e)] = M;
  mxfp4_grouped_linear(ctx, w, x, offsets, y, dequant_scratch);
}

}  // namespace dsq::cuda
