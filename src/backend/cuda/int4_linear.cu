// W4A16 kernels: the load-time re-layout into mma tiles, the tensor-core decode kernel,
// the dequantize kernel of the prefill path, and the dispatcher (see int4_linear.h).
//
// Tile layout, per expert: tiles[n16][k64][lane][word], uint32 words, word j covering
// the 16×16 sub-tile j of the 16×64 piece. With g = lane/4 and t = lane%4 the tensor
// core's A fragment of m16n8k16 holds, per lane, rows {g, g+8} × inputs {2t, 2t+1,
// 2t+8, 2t+9}; nibble p of the word is
//   p:     0     1      2       3        4       5       6       7
//   row:   g     g+8    g       g+8      g       g+8     g       g+8
//   input: 2t    2t     2t+8    2t+8     2t+1    2t+1    2t+9    2t+9
// so (word >> 4r) & 0x000F000F puts the two halves of fragment register r side by side.
#include "backend/cuda/int4_linear.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "backend/cuda/bf16_linear.h"

namespace dsq::cuda {

namespace {

constexpr int kGroup = 128;
constexpr int kThreads = 256;  // 8 warps, one 16-row tile each
constexpr int kTileN = 128;
constexpr int kChunk = 64;     // inputs per 16-byte lane word
constexpr int kMaxItems = 256;  // a decode step has at most one item per expert
// 64-wide K chunks per block for 1..16 rows (more: 8). A compile-time knob so a tuning
// build can compare slice lengths: -DDSQ_INT4_SMALL_M_CHUNKS=8.
#ifndef DSQ_INT4_SMALL_M_CHUNKS
#define DSQ_INT4_SMALL_M_CHUNKS 4
#endif
constexpr int kSmallMChunks = DSQ_INT4_SMALL_M_CHUNKS;

// One piece of work: up to 64 consecutive rows of one expert.
struct WorkItem {
  int expert;
  int row_begin;
  int rows;
};
// Passed by value as a kernel parameter (3 KB; CUDA >= 12.1 allows 32 KB), so a launch
// needs no host-to-device copy.
struct WorkList {
  WorkItem items[kMaxItems];
};

// Row (0 or 8, + g) and input (+ 2t) offsets of nibble p of a lane word (table above).
__device__ __forceinline__ int nibble_row(int p) { return (p & 1) * 8; }
__device__ __forceinline__ int nibble_col(int p) { return ((p >> 1) & 1) * 8 + (p >> 2); }

__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two nibbles (bits 0-3 and 16-19 after the shift) to a bf16 pair of q = u - 8: the
// nibble u becomes the mantissa of 128.0 (bf16 0x4300 + u == 128 + u exactly), then
// 136 is subtracted, exactly.
__device__ __forceinline__ uint32_t nibbles_to_bf16x2(uint32_t word, int shift) {
  const uint32_t biased = ((word >> shift) & 0x000F000Fu) | 0x43004300u;
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(&biased);
  const uint32_t offset_bits = 0x43084308u;  // (136, 136)
  const __nv_bfloat162 r = __hsub2(v, *reinterpret_cast<const __nv_bfloat162*>(&offset_bits));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// MT token tiles of 8 rows (MT*8 rows per work item); CH 64-wide chunks of K per block.
template <int MT, int CH>
__global__ void __launch_bounds__(kThreads, 1)
    w4a16_decode_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                        const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int N, int K,
                        const __grid_constant__ WorkList work) {
  constexpr int kSlice = CH * kChunk;
  constexpr int kRowStride = kSlice + 8;  // +16 bytes: conflict-free fragment reads
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw);

  const WorkItem item = work.items[blockIdx.z];
  const int k0 = blockIdx.y * kSlice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ntile = blockIdx.x * (kTileN / 16) + warp;
  const bool active = ntile * 16 < N;

  // Issue this warp's weight loads first (streamed: each byte is used once).
  uint4 wv[CH];
  if (active) {
    const uint4* src = tiles + ((size_t(item.expert) * (N / 16) + ntile) * (K / kChunk) + k0 / kChunk) * 32 + lane;
#pragma unroll
    for (int c = 0; c < CH; ++c) wv[c] = __ldcs(src + c * 32);
  }
  // Stage the activation slice; rows past the item are zero.
  for (int i = threadIdx.x; i < MT * 8 * (kSlice / 8); i += kThreads) {
    const int r = i / (kSlice / 8), c = i % (kSlice / 8);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < item.rows) v = *reinterpret_cast<const uint4*>(x + size_t(item.row_begin + r) * K + k0 + c * 8);
    *reinterpret_cast<uint4*>(xs + r * kRowStride + c * 8) = v;
  }
  __syncthreads();
  if (!active) return;

  const int g = lane / 4, t = lane % 4;
  float acc[MT][4] = {};
  float part[MT][4];
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    if (c % 2 == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m) part[m][0] = part[m][1] = part[m][2] = part[m][3] = 0.0f;
    }
    const uint32_t words[4] = {wv[c].x, wv[c].y, wv[c].z, wv[c].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t a[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = nibbles_to_bf16x2(words[j], 4 * r);
      const int kk = c * kChunk + j * 16 + 2 * t;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const __nv_bfloat16* row = xs + (m * 8 + g) * kRowStride + kk;
        mma_bf16_16816(part[m], a, *reinterpret_cast<const uint32_t*>(row),
                       *reinterpret_cast<const uint32_t*>(row + 8));
      }
    }
    if (c % 2 == 1) {  // a 128-wide group is complete: apply its scales in fp32
      const int group = (k0 + c * kChunk) / kGroup;
      const float* s = scales + (size_t(item.expert) * (K / kGroup) + group) * N + ntile * 16 + g;
      const float s0 = __ldg(s), s1 = __ldg(s + 8);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        acc[m][0] += part[m][0] * s0;
        acc[m][1] += part[m][1] * s0;
        acc[m][2] += part[m][2] * s1;
        acc[m][3] += part[m][3] * s1;
      }
    }
  }
  // C fragment: (row g, tokens 2t, 2t+1) and (row g+8, same tokens). K slices add up.
  const int n = ntile * 16 + g;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int tok = m * 8 + 2 * t;
    if (tok < item.rows) {
      float* out = y + size_t(item.row_begin + tok) * N + n;
      atomicAdd(out, acc[m][0]);
      atomicAdd(out + 8, acc[m][2]);
    }
    if (tok + 1 < item.rows) {
      float* out = y + size_t(item.row_begin + tok + 1) * N + n;
      atomicAdd(out, acc[m][1]);
      atomicAdd(out + 8, acc[m][3]);
    }
  }
}

// One thread per lane word (uint4): writes its 16 rows × 4 input pairs as bf16x2.
__global__ void int4_dequant_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                                    int expert, int N, int K, __nv_bfloat16* __restrict__ out) {
  const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t per_expert = size_t(N / 16) * (K / kChunk) * 32;
  if (idx >= per_expert) return;
  const int lane = int(idx % 32);
  const int chunk = int((idx / 32) % (K / kChunk));
  const int ntile = int(idx / 32 / (K / kChunk));
  const uint4 v = tiles[size_t(expert) * per_expert + idx];
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  const int g = lane / 4, t = lane % 4;
  const int group = chunk * kChunk / kGroup;
  for (int j = 0; j < 4; ++j) {
    for (int r = 0; r < 4; ++r) {
      const int row = ntile * 16 + g + nibble_row(r);
      const int col = chunk * kChunk + j * 16 + 2 * t + nibble_col(r);
      const float s = scales[(size_t(expert) * (K / kGroup) + group) * N + row];
      const int q0 = int((words[j] >> (4 * r)) & 0xF) - 8;
      const int q1 = int((words[j] >> (4 * r + 16)) & 0xF) - 8;
      // bf16(q * s): the product rounded once, as compressed-tensors dequantizes.
      *reinterpret_cast<__nv_bfloat162*>(out + size_t(row) * K + col) =
          __floats2bfloat162_rn(float(q0) * s, float(q1) * s);
    }
  }
}

// One thread per tile word: gathers its 8 nibbles from the compressed-tensors words
// (int32 [E][N][K/8], nibble i = input 8w+i).
__global__ void int4_relayout_kernel(const int32_t* __restrict__ packed, int N, int K, size_t words,
                                     uint32_t* __restrict__ tiles) {
  const size_t o = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= words) return;
  const int j = int(o % 4), lane = int((o / 4) % 32);
  const size_t piece = o / 128;  // (expert, n16, k64)
  const int chunk = int(piece % (K / kChunk));
  const size_t ntile_global = piece / (K / kChunk);  // expert * (N/16) + n16
  const int g = lane / 4, t = lane % 4;
  uint32_t word = 0;
#pragma unroll
  for (int p = 0; p < 8; ++p) {
    const size_t row = ntile_global * 16 + g + nibble_row(p);  // expert-major rows
    const int col = chunk * kChunk + j * 16 + 2 * t + nibble_col(p);
    const uint32_t src = uint32_t(packed[row * (K / 8) + col / 8]);
    word |= ((src >> (4 * (col % 8))) & 0xFu) << (4 * p);
  }
  tiles[o] = word;
}

// SwiGLU over the fp32 output of a gate/up weight (Int4ExpertWeights::gate_up): in each
// 16-column tile, columns 0..7 are gates and 8..15 the matching ups.
__global__ void swiglu_interleaved_kernel(const float* __restrict__ gu, int64_t rows, int F, float limit,
                                          __nv_bfloat16* __restrict__ h) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * F) return;
  const int64_t r = i / F;
  const int f = int(i % F);
  const float* row = gu + r * 2 * F + (f / 8) * 16 + f % 8;
  const float gate = fminf(row[0], limit);
  const float up = fminf(fmaxf(row[8], -limit), limit);
  h[i] = __float2bfloat16(gate / (1.0f + __expf(-gate)) * up);
}

template <int MT, int CH>
void launch_decode(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x,
                   float* y, const WorkList& work, int count) {
  const size_t smem = size_t(MT) * 8 * (CH * kChunk + 8) * sizeof(__nv_bfloat16);
  static bool configured = false;  // the attribute belongs to the function: set it once
  if (!configured) {
    DSQ_CUDA_CHECK(cudaFuncSetAttribute(w4a16_decode_kernel<MT, CH>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    configured = true;
  }
  const dim3 grid(unsigned((w.rows() + kTileN - 1) / kTileN), unsigned(w.cols() / (CH * kChunk)),
                  unsigned(count));
  w4a16_decode_kernel<MT, CH><<<grid, kThreads, smem, ctx.stream()>>>(
      w.tiles(), w.scales(), x, y, int(w.rows()), int(w.cols()), work);
  DSQ_CUDA_CHECK_LAUNCH();
}

// Launches the decode kernel over `items`, in batches of kMaxItems, with the smallest
// token-tile count that covers the largest item.
void run_decode(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                const std::vector<WorkItem>& items) {
  auto work_list = std::make_unique<WorkList>();
  WorkList& work = *work_list;
  for (size_t begin = 0; begin < items.size(); begin += kMaxItems) {
    const int count = int(std::min<size_t>(kMaxItems, items.size() - begin));
    int max_rows = 0;
    for (int i = 0; i < count; ++i) {
      work.items[i] = items[begin + i];
      max_rows = std::max(max_rows, items[begin + i].rows);
    }
    // Few rows: shorter K slices, more blocks in flight. More rows: longer slices so
    // fewer partial sums meet in the fp32 atomics.
    if (max_rows <= 8) launch_decode<1, kSmallMChunks>(ctx, w, x, y, work, count);
    else if (max_rows <= 16) launch_decode<2, kSmallMChunks>(ctx, w, x, y, work, count);
    else if (max_rows <= 32) launch_decode<4, 8>(ctx, w, x, y, work, count);
    else launch_decode<8, 8>(ctx, w, x, y, work, count);
  }
}

}  // namespace

Int4ExpertWeights::Int4ExpertWeights(const int32_t* packed, const uint16_t* scales, int64_t E,
                                     int64_t N, int64_t K, const std::string& what)
    : E_(E), N_(N), K_(K) {
  DSQ_CHECK(E > 0 && N > 0 && K > 0, what, ": empty int4 weight [", E, " x ", N, ", ", K, "]");
  DSQ_CHECK(N % 16 == 0, what, ": int4 kernels need out-features divisible by 16, got ", N);
  DSQ_CHECK(K % 512 == 0, what, ": int4 kernels need in-features divisible by 512, got ", K);
  // The re-layout runs on the GPU: a whole model's experts take seconds on a CPU.
  const size_t words = size_t(E * N * K / 8);
  auto source = DeviceBuffer<int32_t>::from_host(packed, words);
  tiles_ = DeviceBuffer<uint4>(words / 4);
  int4_relayout_kernel<<<unsigned((words + 255) / 256), 256>>>(source.get(), int(N), int(K), words,
                                                               reinterpret_cast<uint32_t*>(tiles_.get()));
  DSQ_CUDA_CHECK_LAUNCH();
  const int64_t groups = K / kGroup;
  std::vector<float> sc(size_t(E * groups * N));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t gi = 0; gi < groups; ++gi) {
        const uint32_t bits = uint32_t(scales[(e * N + n) * groups + gi]) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        sc[size_t((e * groups + gi) * N + n)] = f;
      }
  scales_ = DeviceBuffer<float>::from_host(sc);
  DSQ_CUDA_CHECK(cudaDeviceSynchronize());  // `source` is freed on return
}

Int4ExpertWeights Int4ExpertWeights::gate_up(const int32_t* w1, const uint16_t* s1, const int32_t* w3,
                                             const uint16_t* s3, int64_t E, int64_t F, int64_t K,
                                             const std::string& what) {
  DSQ_CHECK(F % 8 == 0, what, ": gate/up width ", F, " is not a multiple of 8");
  const int64_t wpr = K / 8, gpr = K / kGroup;
  std::vector<int32_t> packed(size_t(E * 2 * F * wpr));
  std::vector<uint16_t> scales(size_t(E * 2 * F * gpr));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = 0; r < 2 * F; ++r) {
      // Row r of the pair: 16-row tiles of 8 gate rows then the 8 matching up rows.
      const int64_t feature = (r / 16) * 8 + r % 8;
      const bool up = r % 16 >= 8;
      const int64_t src = e * F + feature;
      std::memcpy(&packed[size_t((e * 2 * F + r) * wpr)], (up ? w3 : w1) + src * wpr, size_t(wpr) * 4);
      std::memcpy(&scales[size_t((e * 2 * F + r) * gpr)], (up ? s3 : s1) + src * gpr, size_t(gpr) * 2);
    }
  Int4ExpertWeights w(packed.data(), scales.data(), E, 2 * F, K, what);
  w.gate_up_ = true;
  return w;
}

void int4_dequantize_expert(const GpuContext& ctx, const Int4ExpertWeights& w, int64_t expert,
                            __nv_bfloat16* out) {
  DSQ_CHECK(expert >= 0 && expert < w.experts(), "int4_dequantize_expert: expert ", expert,
            " out of range [0, ", w.experts(), ")");
  const size_t words = size_t(w.rows() / 16) * (w.cols() / kChunk) * 32;
  int4_dequant_kernel<<<unsigned((words + 255) / 256), 256, 0, ctx.stream()>>>(
      w.tiles(), w.scales(), int(expert), int(w.rows()), int(w.cols()), out);
  DSQ_CUDA_CHECK_LAUNCH();
}

void int4_grouped_linear(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x,
                         const std::vector<int64_t>& offsets, float* y, __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(int64_t(offsets.size()) == w.experts() + 1, "int4_grouped_linear: ", offsets.size(),
            " offsets for ", w.experts(), " experts (need experts + 1)");
  DSQ_CHECK(offsets.front() == 0, "int4_grouped_linear: offsets must start at 0");
  for (size_t e = 0; e + 1 < offsets.size(); ++e)
    DSQ_CHECK(offsets[e + 1] >= offsets[e], "int4_grouped_linear: offsets decrease at expert ", e);
  const int64_t total = offsets.back();
  if (total == 0) return;
  DSQ_CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(total * w.rows()) * sizeof(float), ctx.stream()));
  std::vector<WorkItem> items;
  for (int64_t e = 0; e < w.experts(); ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    if (dequant_scratch && rows > kDecodeMaxRows) {
      int4_dequantize_expert(ctx, w, e, dequant_scratch);
      bf16_linear_f32_out(ctx, x + offsets[e] * w.cols(), dequant_scratch, y + offsets[e] * w.rows(),
                          rows, w.rows(), w.cols());
      continue;
    }
    for (int64_t r = 0; r < rows; r += kDecodeMaxRows)
      items.push_back({int(e), int(offsets[e] + r), int(std::min<int64_t>(kDecodeMaxRows, rows - r))});
  }
  if (!items.empty()) run_decode(ctx, w, x, y, items);
}

void int4_grouped_swiglu(const GpuContext& ctx, const Int4ExpertWeights& gate_up, const __nv_bfloat16* x,
                         const std::vector<int64_t>& offsets, float limit, __nv_bfloat16* h, float* gate_up_out,
                         __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(gate_up.gate_up_interleaved(), "int4_grouped_swiglu: the weights are not a gate/up pair "
            "(build them with Int4ExpertWeights::gate_up)");
  int4_grouped_linear(ctx, gate_up, x, offsets, gate_up_out, dequant_scratch);
  const int64_t rows = offsets.back(), F = gate_up.rows() / 2;
  if (rows == 0) return;
  swiglu_interleaved_kernel<<<unsigned((rows * F + 255) / 256), 256, 0, ctx.stream()>>>(gate_up_out, rows, int(F),
                                                                                        limit, h);
  DSQ_CUDA_CHECK_LAUNCH();
}

void int4_linear(const GpuContext& ctx, const Int4ExpertWeights& w, int64_t expert,
                 const __nv_bfloat16* x, int64_t M, float* y, __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(expert >= 0 && expert < w.experts(), "int4_linear: expert ", expert, " out of range");
  std::vector<int64_t> offsets(size_t(w.experts() + 1), 0);
  for (int64_t e = expert + 1; e <= w.experts(); ++e) offsets[size_t(e)] = M;
  int4_grouped_linear(ctx, w, x, offsets, y, dequant_scratch);
}

}  // namespace dsq::cuda
