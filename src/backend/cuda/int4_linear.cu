// W4A16 kernels: the load-time re-layout into mma tiles, the tensor-core decode kernels
// (mma.sync: whole-K blocks for items of <= 8 rows; split-K blocks with their zeroing
// kernel for longer items), the grouped prefill GEMM (wgmma), the dequantize kernel, the
// SwiGLU pass and the dispatcher (see int4_linear.h). The decode kernels' weight loads
// and MMA loop are int4_mma.cuh's, shared with int4_moe_decode.cu.
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
#include "backend/cuda/int4_mma.cuh"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "backend/cuda/bf16_linear.h"
#include "backend/cuda/dependent_launch.h"

namespace dsq::cuda {

namespace {

constexpr int kGroup = kInt4Group;
constexpr int kThreads = 256;  // 8 warps, one 16-row tile each
constexpr int kTileN = 128;
constexpr int kChunk = kInt4Chunk;  // inputs per 16-byte lane word
constexpr int kMaxItems = 256;  // a decode step has at most one item per expert
// Up to this many work items (active experts, in decode) per launch, longer items (9-16
// rows) take the split-K kernel with 256-wide slices (the extra blocks fill the GPU);
// above it, 512-wide slices: many experts fill the GPU anyway and then gain from fewer
// partial sums meeting in the atomics (measured on an H100: bench/results/gpu-gemm.md).
constexpr int kFewItems = 16;
// Up to this many work items per launch (M <= 8 tokens at top-6), items of <= 8 rows run
// the whole-K decode kernel: no zeroing launch, one grid boundary less per call. With
// more items the split-K kernel was faster on an H100 (w2 at M = 16: 3 %): a whole-K block
// covers only 16 rows of W, so x is re-read from L2 more often
// (bench/results/gpu-gemm-int4-mxfp4.md).
constexpr int kWholeKMaxItems = 48;
int g_forced_decode_chunks = 0;  // int4_force_decode_chunks()

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

// MT token tiles of 8 rows (MT*8 rows per work item); CH 64-wide chunks of K per block.
// The K slices of one output tile add up in fp32 atomics into y, zeroed just before by
// zero_rows_kernel. Both are programmatic dependents (dependent_launch.h) in a chain
// previous kernel -> zeroing -> this: this kernel issues its weight loads before it
// waits for the zeroing, which itself waits for the kernel that wrote x, so the weights
// stream while those finish.
template <int MT, int CH>
__global__ void __launch_bounds__(kThreads, 1)
    w4a16_decode_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                        const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int N, int K,
                        const __grid_constant__ WorkList work) {
  constexpr int kSlice = CH * kChunk;
  constexpr int kRowStride = kSlice + 8;  // +16 bytes: conflict-free fragment reads
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  // A following kernel launched as our dependent (the SwiGLU pass, the next zeroing) may
  // be scheduled now; it waits for this whole grid before touching our data.
  allow_dependent_launch();

  const WorkItem item = work.items[blockIdx.z];
  const int k0 = blockIdx.y * kSlice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ntile = blockIdx.x * (kTileN / 16) + warp;
  const bool active = ntile * 16 < N;

  // Issue this warp's weight loads first.
  uint4 wv[CH];
  if (active) load_int4_slice<CH>(tiles, item.expert, ntile, k0, N, K, lane, wv);
  wait_for_previous_kernel();  // y is zeroed, and (through the zeroing's own wait) x is written
  // Stage the activation slice of the item's rows.
  for (int i = threadIdx.x; i < item.rows * (kSlice / 8); i += kThreads) {
    const int r = i / (kSlice / 8), c = i % (kSlice / 8);
    *reinterpret_cast<uint4*>(xs + r * kRowStride + c * 8) =
        *reinterpret_cast<const uint4*>(x + size_t(item.row_begin + r) * K + k0 + c * 8);
  }
  __syncthreads();
  if (!active) return;

  const int g = lane / 4, t = lane % 4;
  float acc[MT][4] = {};
  mma_int4_slice<MT, CH>(wv, xs, kRowStride, item.rows,
                         scales + (size_t(item.expert) * (K / kGroup) + k0 / kGroup) * N + ntile * 16 + g, N, lane,
                         acc);
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

// At least this many blocks of the whole-K kernel per SM (<= 64 registers per thread):
// unbounded, the kernels took 58-71 registers depending on the code around the MMA loop,
// three blocks per SM above 64 (bench/results/gpu-gemm-int4-mxfp4.md).
constexpr int kRowsKernelBlocksPerSm = 4;

// Items of at most 8 rows (every decode item under Int4Path::Auto): a block owns one
// 16-row tile of W over all of K. Its 8 warps take consecutive 64·CH-wide K slices
// (rounds of 8 slices where K is longer), each staging its own slice of x, and add their
// partial sums through shared memory in warp order before one plain store per output:
// no atomics, hence no zeroing launch and one grid-completion wait per call instead of
// two, and the result does not depend on timing. A programmatic dependent of the kernel
// that wrote x: the first round's weights load before waiting for it.
template <int CH>
__global__ void __launch_bounds__(kThreads, kRowsKernelBlocksPerSm)
    w4a16_decode_rows_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                             const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int N, int K, int row_cap,
                             const __grid_constant__ WorkList work) {
  constexpr int kSlice = CH * kChunk;
  constexpr int kRowStride = kSlice + 8;  // +16 bytes: conflict-free fragment reads
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float4* sums = reinterpret_cast<float4*>(smem_raw);  // [8 warps][32 lanes]
  allow_dependent_launch();

  const WorkItem item = work.items[blockIdx.y];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ntile = blockIdx.x, g = lane / 4;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw + kThreads * sizeof(float4)) +
                      warp * row_cap * kRowStride;
  const int rounds = K / (8 * kSlice);
  int k0 = warp * kSlice;
  uint4 wv[CH];
  load_int4_slice<CH>(tiles, item.expert, ntile, k0, N, K, lane, wv);
  wait_for_previous_kernel();  // x is written, and whoever read y before is done
  float acc[1][4] = {};
  for (int round = 0;;) {
    for (int i = lane; i < item.rows * (kSlice / 8); i += 32) {
      const int r = i / (kSlice / 8), c = i % (kSlice / 8);
      *reinterpret_cast<uint4*>(xs + r * kRowStride + c * 8) =
          *reinterpret_cast<const uint4*>(x + size_t(item.row_begin + r) * K + k0 + c * 8);
    }
    __syncwarp();
    mma_int4_slice<1, CH>(wv, xs, kRowStride, item.rows,
                          scales + (size_t(item.expert) * (K / kGroup) + k0 / kGroup) * N + ntile * 16 + g, N, lane,
                          acc);
    if (++round == rounds) break;
    __syncwarp();  // every lane has read xs before it is restaged
    k0 += 8 * kSlice;
    load_int4_slice<CH>(tiles, item.expert, ntile, k0, N, K, lane, wv);
  }
  sums[threadIdx.x] = make_float4(acc[0][0], acc[0][1], acc[0][2], acc[0][3]);
  __syncthreads();
  if (warp != 0) return;
  store_summed_tile(sums, kThreads / 32, lane, ntile, item.rows, item.row_begin, N, y);
}

// Row ranges of y the decode kernel accumulates into, zeroed by one launch.
struct ZeroRanges {
  int count;
  int64_t begin[kMaxItems], end[kMaxItems];  // rows
};

// Zeroes the rows of `ranges` (N floats each) once the previous kernel (which may still
// read y) is done, and lets the decode kernel, its programmatic dependent, start
// streaming weights at once.
__global__ void zero_rows_kernel(float* __restrict__ y, int N, const __grid_constant__ ZeroRanges ranges) {
  allow_dependent_launch();
  wait_for_previous_kernel();
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (int r = 0; r < ranges.count; ++r) {
    float4* p = reinterpret_cast<float4*>(y + ranges.begin[r] * N);  // N % 16 == 0: 16-byte aligned rows
    const size_t n = size_t(ranges.end[r] - ranges.begin[r]) * N / 4;
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
      p[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

// ---- grouped prefill GEMM (Hopper wgmma) ----
//
// For experts with many rows: y_tile^T = W_block · x_tile^T on the warpgroup tensor
// cores, without a bf16 copy of W. A block owns 256 rows of W (4 warpgroups × 64) and BN
// consecutive rows of x of one expert. Per 128-wide K step it stages, with cp.async into
// a 4-deep ring of shared-memory buffers: the x tile (K-major, 128-byte swizzled as the
// wgmma descriptor expects), the 16 mma-tile words of W per lane (the load-time layout
// is already the wgmma A-register layout, which per warp equals the mma.m16n8k16 one)
// and the 256 scales of that group. Each thread turns its nibbles into bf16(q·s) in
// registers (exactly the checkpoint's dequantized value) and feeds them as wgmma's A
// operand; x is the B operand, read from shared memory through the descriptor.
constexpr int kGemmRows = 256;        // rows of W per block
constexpr int kGemmThreads = 512;     // 4 warpgroups
constexpr int kGemmK = 128;           // K per pipeline stage (one scale group)
constexpr int kGemmStages = 4;
constexpr int kGemmWBytes = kGemmRows / 16 * 2 * 32 * 16;  // 16 tiles × 2 chunks × 32 lanes × 16 B
constexpr int kGemmScaleBytes = kGemmRows * 4;
constexpr int kMaxGemmTiles = 2048;   // tiles per launch (kernel parameter, 24 KB)

template <int BN>
constexpr int gemm_stage_bytes() { return BN * kGemmK * 2 + kGemmWBytes + kGemmScaleBytes; }
template <int BN>
constexpr int gemm_smem_bytes() { return kGemmStages * gemm_stage_bytes<BN>() + 1024; }  // + alignment

struct GemmTile {
  int expert;
  int row_begin;
  int rows;  // 1..BN
};
struct GemmTileList {
  GemmTile tiles[kMaxGemmTiles];
};

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Shared-memory descriptor of a K-major bf16 operand in the 128-byte swizzle: rows of 128
// bytes, 8-row groups 1024 bytes apart (stride byte offset), leading offset unused (1).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

#define DSQ_ACC8(d, i) \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

// d[64 × BN] (+)= A (registers, bf16) · B (shared memory, descriptor), one k16 step;
// accumulate == 0 overwrites d (the first step: no instruction but wgmma defines d).
template <int BN>
__device__ __forceinline__ void wgmma_rs(float (&d)[BN / 2], const uint32_t (&a)[4], uint64_t desc, int accumulate);
template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t desc,
                                              int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, "
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : DSQ_ACC8(d, 0), DSQ_ACC8(d, 8), DSQ_ACC8(d, 16), DSQ_ACC8(d, 24), DSQ_ACC8(d, 32), DSQ_ACC8(d, 40),
        DSQ_ACC8(d, 48), DSQ_ACC8(d, 56)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,
                                             int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : DSQ_ACC8(d, 0), DSQ_ACC8(d, 8), DSQ_ACC8(d, 16), DSQ_ACC8(d, 24)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_rs<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t desc,
                                             int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : DSQ_ACC8(d, 0), DSQ_ACC8(d, 8)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}
#undef DSQ_ACC8

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous wgmmas.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One thread's share of loading a pipeline stage, fixed per block: x [2 halves of 64 K]
// [BN rows][128 B, 16-byte chunks swizzled], W [16 tiles][2 chunks][32 lanes] uint4,
// scales [256] fp32 of the stage's group. load(stage, kt) issues the cp.asyncs of step kt.
template <int BN>
struct GemmStageLoader {
  static constexpr int kXChunks = BN * 16 / kGemmThreads;  // 16-byte chunks per thread
  const __nv_bfloat16* x_src;  // first row of this thread, at its chunk
  uint32_t x_dst;              // offset in the stage, first row
  int x_valid_rows;            // rows of this thread's first chunk's row onwards that exist
  size_t x_row_step;           // elements between this thread's successive rows
  const uint4* w_src;
  size_t w_tile_step;          // uint4s between this thread's two tiles
  const float* s_src;          // nullptr: this thread loads no scales

  __device__ GemmStageLoader(const GemmTile& tile, int n0, const uint4* tiles, const float* scales,
                             const __nv_bfloat16* x, int N, int K) {
    const int r = threadIdx.x / 16, c = threadIdx.x % 16, half = c / 8, cc = c % 8;
    x_valid_rows = tile.rows - r;
    x_row_step = size_t(kGemmThreads / 16) * K;
    x_src = x + size_t(tile.row_begin + min(r, tile.rows - 1)) * K + c * 8;
    x_dst = half * BN * 128 + r * 128 + ((cc ^ (r & 7)) << 4);  // rows advance by 32: same swizzle
    const int nt = threadIdx.x / 64, rest = threadIdx.x % 64;
    w_src = tiles + (size_t(tile.expert) * (N / 16) + n0 / 16 + nt) * (K / kChunk) * 32 + rest;
    w_tile_step = size_t(kGemmThreads / 64) * (K / kChunk) * 32;
    s_src = threadIdx.x < kGemmScaleBytes / 16
                ? scales + size_t(tile.expert) * (K / kGroup) * N + n0 + threadIdx.x * 4 : nullptr;
  }
  __device__ __forceinline__ void load(uint32_t stage, int kt, int N) const {
#pragma unroll
    for (int m = 0; m < kXChunks; ++m) {
      const bool valid = m * (kGemmThreads / 16) < x_valid_rows;
      cp_async_16(stage + x_dst + m * (kGemmThreads / 16) * 128,
                  valid ? x_src + m * x_row_step + kt * kGemmK : x_src, valid);
    }
    const uint32_t w_dst = stage + BN * kGemmK * 2;
#pragma unroll
    for (int m = 0; m < 2; ++m)
      cp_async_16(w_dst + (threadIdx.x + m * kGemmThreads) * 16, w_src + m * w_tile_step + kt * 2 * 32, true);
    if (s_src) cp_async_16(w_dst + kGemmWBytes + threadIdx.x * 16, s_src + size_t(kt) * N, true);
  }
};

template <int BN>
__global__ void __launch_bounds__(kGemmThreads, 1)
    w4a16_gemm_kernel(const uint4* __restrict__ tiles, const float* __restrict__ scales,
                      const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int N, int K,
                      const __grid_constant__ GemmTileList work) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (uint32_t(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;
  const unsigned char* base_ptr = smem_raw + (base - uint32_t(__cvta_generic_to_shared(smem_raw)));
  constexpr int kStage = gemm_stage_bytes<BN>();

  const GemmTile tile = work.tiles[blockIdx.y];
  const int n0 = blockIdx.x * kGemmRows;
  const int ktiles = K / kGemmK;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int ntile = wg * 4 + warp;  // this warp's 16-row tile within the block

  const GemmStageLoader<BN> loader(tile, n0, tiles, scales, x, N, K);
  for (int s = 0; s < kGemmStages - 2; ++s) {
    if (s < ktiles) loader.load(base + s * kStage, s, N);
    cp_async_commit();
  }
  float acc[BN / 2];  // first written by the first wgmma (accumulate == 0)

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kGemmStages - 3>();  // this thread's copies for stage kt have landed
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // visible to wgmma's reads
    __syncthreads();  // everyone's copies landed; every warpgroup has issued stage kt-1
    // The buffer of stage kt-2 is free: its wgmmas completed before the previous barrier.
    const int next = kt + kGemmStages - 2;
    if (next < ktiles) loader.load(base + (next % kGemmStages) * kStage, next, N);
    cp_async_commit();

    const uint32_t stage = base + (kt % kGemmStages) * kStage;
    const unsigned char* stage_ptr = base_ptr + (kt % kGemmStages) * kStage;
    const uint4* wsm = reinterpret_cast<const uint4*>(stage_ptr + BN * kGemmK * 2) + ntile * 64 + lane;
    const uint4 w0 = wsm[0], w1 = wsm[32];
    const float* ssm = reinterpret_cast<const float*>(stage_ptr + BN * kGemmK * 2 + kGemmWBytes) + ntile * 16 + g;
    const __nv_bfloat162 s_lo = __float2bfloat162_rn(ssm[0]), s_hi = __float2bfloat162_rn(ssm[8]);
    wgmma_wait_all();  // stage kt-1's wgmmas no longer read the A registers
    uint32_t a[8][4];
    const uint32_t words[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        // bf16(q) exactly, then bf16(q * s): one rounding, the checkpoint's value.
        const uint32_t q = nibbles_to_bf16x2(words[j], 4 * r);
        const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&q), (r & 1) ? s_hi : s_lo);
        a[j][r] = *reinterpret_cast<const uint32_t*>(&v);
      }
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < 8; ++j)
      wgmma_rs<BN>(acc, a[j], smem_desc_sw128(stage + (j / 4) * BN * 128 + (j % 4) * 32), kt > 0 || j > 0);
    wgmma_commit();
  }
  wgmma_wait_all();
  fence_operands(acc);

  // Accumulator fragment: for each 8-token group i, (row g, tokens 8i+2t, +1) and
  // (row g+8, same tokens); rows are W rows (output features), tokens are x rows.
  const int n = n0 + ntile * 16 + g;
#pragma unroll
  for (int i = 0; i < BN / 8; ++i) {
    const int tok = 8 * i + 2 * t;
    if (tok < tile.rows) {
      float* out = y + size_t(tile.row_begin + tok) * N + n;
      out[0] = acc[4 * i];
      out[8] = acc[4 * i + 2];
    }
    if (tok + 1 < tile.rows) {
      float* out = y + size_t(tile.row_begin + tok + 1) * N + n;
      out[0] = acc[4 * i + 1];
      out[8] = acc[4 * i + 3];
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
// Launched as the programmatic dependent of the GEMM before it: scheduled while that one
// still runs, it waits for it before reading (hides this launch's latency in decode),
// and lets the next dependent (the down projection's zeroing) be scheduled in turn.
__global__ void swiglu_interleaved_kernel(const float* __restrict__ gu, int64_t rows, int F, float limit,
                                          __nv_bfloat16* __restrict__ h) {
  allow_dependent_launch();
  wait_for_previous_kernel();
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
void launch_decode(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                   const WorkList& work, int count) {
  const size_t smem = size_t(MT) * 8 * (CH * kChunk + 8) * sizeof(__nv_bfloat16);
  static bool configured = false;  // the attribute belongs to the function: set it once
  if (!configured) {
    DSQ_CUDA_CHECK(cudaFuncSetAttribute(w4a16_decode_kernel<MT, CH>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    configured = true;
  }
  const dim3 grid(unsigned((w.rows() + kTileN - 1) / kTileN), unsigned(w.cols() / (CH * kChunk)),
                  unsigned(count));
  launch_dependent(ctx, w4a16_decode_kernel<MT, CH>, grid, dim3(kThreads), smem, w.tiles(), w.scales(), x, y,
                   int(w.rows()), int(w.cols()), work);
}

// The split-K decode kernel's K slice (in 64-wide chunks) for a launch of `count` items
// of at most `max_rows` rows. Few rows and few items: shorter slices, more blocks in
// flight. Otherwise longer slices, so fewer partial sums meet in the atomics.
int decode_chunks(int count, int max_rows) {
  if (max_rows > 16) return 8;
  if (g_forced_decode_chunks > 0) return g_forced_decode_chunks;
  return count <= kFewItems ? 4 : 8;
}

// The whole-K decode kernel's slice per warp in 64-wide chunks: K / 512 when that is 2,
// 4 or 8 (one round: all of a block's weights in flight at once), else the largest of
// those dividing it (several rounds); 0 where none does (that kernel cannot run).
int rows_kernel_chunks(int64_t K) {
  for (int ch : {8, 4, 2})
    if ((K / 512) % ch == 0) return ch;
  return 0;
}

template <int CH>
void launch_decode_rows(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                        const WorkList& work, int count, int row_cap) {
  constexpr size_t kPerRow = size_t(kThreads / 32) * (CH * kChunk + 8) * sizeof(__nv_bfloat16);
  static bool configured = false;  // the attribute belongs to the function: set it once, for 8 rows
  if (!configured) {
    DSQ_CUDA_CHECK(cudaFuncSetAttribute(w4a16_decode_rows_kernel<CH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(kThreads * sizeof(float4) + 8 * kPerRow)));
    configured = true;
  }
  const dim3 grid(unsigned(w.rows() / 16), unsigned(count));
  launch_dependent(ctx, w4a16_decode_rows_kernel<CH>, grid, dim3(kThreads), kThreads * sizeof(float4) + row_cap * kPerRow,
                   w.tiles(), w.scales(), x, y, int(w.rows()), int(w.cols()), row_cap, work);
}

// Launches the decode kernels over `items`, in batches of kMaxItems. Few items of <= 8
// rows (kWholeKMaxItems) run the whole-K kernel, which writes y directly; otherwise
// `zero_ranges` (row ranges of y) are zeroed first and the split-K kernel runs with the
// smallest token-tile count that covers the largest item.
void run_decode(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                const std::vector<WorkItem>& items, const std::vector<std::pair<int64_t, int64_t>>& zero_ranges) {
  int most_rows = 0;
  for (const WorkItem& item : items) most_rows = std::max(most_rows, item.rows);
  const int rows_chunks = rows_kernel_chunks(w.cols());
  const bool whole_k = most_rows <= 8 && rows_chunks > 0 &&
                       (g_forced_decode_chunks == kInt4DecodeWholeK ||
                        (g_forced_decode_chunks == 0 && items.size() <= size_t(kWholeKMaxItems)));
  auto work_list = std::make_unique<WorkList>();
  WorkList& work = *work_list;
  if (whole_k) {
    for (size_t begin = 0; begin < items.size(); begin += kMaxItems) {
      const int count = int(std::min<size_t>(kMaxItems, items.size() - begin));
      int row_cap = 0;
      for (int i = 0; i < count; ++i) {
        work.items[i] = items[begin + i];
        row_cap = std::max(row_cap, items[begin + i].rows);
      }
      if (rows_chunks == 2) launch_decode_rows<2>(ctx, w, x, y, work, count, row_cap);
      else if (rows_chunks == 4) launch_decode_rows<4>(ctx, w, x, y, work, count, row_cap);
      else launch_decode_rows<8>(ctx, w, x, y, work, count, row_cap);
    }
    return;
  }
  auto ranges = std::make_unique<ZeroRanges>();
  for (size_t begin = 0; begin < zero_ranges.size(); begin += kMaxItems) {
    ranges->count = int(std::min<size_t>(kMaxItems, zero_ranges.size() - begin));
    int64_t floats = 0;
    for (int i = 0; i < ranges->count; ++i) {
      ranges->begin[i] = zero_ranges[begin + i].first;
      ranges->end[i] = zero_ranges[begin + i].second;
      floats += (ranges->end[i] - ranges->begin[i]) * w.rows();
    }
    const unsigned blocks = unsigned(std::clamp<int64_t>(floats / 4 / 256, 1, 1024));
    launch_dependent(ctx, zero_rows_kernel, dim3(blocks), dim3(256), 0, y, int(w.rows()), *ranges);
  }
  for (size_t begin = 0; begin < items.size(); begin += kMaxItems) {
    const int count = int(std::min<size_t>(kMaxItems, items.size() - begin));
    int max_rows = 0;
    for (int i = 0; i < count; ++i) {
      work.items[i] = items[begin + i];
      max_rows = std::max(max_rows, items[begin + i].rows);
    }
    const int chunks = decode_chunks(count, max_rows);
    if (max_rows <= 8) {
      if (chunks == 2) launch_decode<1, 2>(ctx, w, x, y, work, count);
      else if (chunks == 4) launch_decode<1, 4>(ctx, w, x, y, work, count);
      else launch_decode<1, 8>(ctx, w, x, y, work, count);
    } else if (max_rows <= 16) {
      if (chunks == 2) launch_decode<2, 2>(ctx, w, x, y, work, count);
      else if (chunks == 4) launch_decode<2, 4>(ctx, w, x, y, work, count);
      else launch_decode<2, 8>(ctx, w, x, y, work, count);
    } else if (max_rows <= 32) {
      launch_decode<4, 8>(ctx, w, x, y, work, count);
    } else {
      launch_decode<8, 8>(ctx, w, x, y, work, count);
    }
  }
}

template <int BN>
void launch_gemm(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x, float* y,
                 const std::vector<GemmTile>& tiles) {
  if (tiles.empty()) return;
  static bool configured = false;  // the attribute belongs to the function: set it once
  if (!configured) {
    DSQ_CUDA_CHECK(cudaFuncSetAttribute(w4a16_gemm_kernel<BN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        gemm_smem_bytes<BN>()));
    configured = true;
  }
  auto list = std::make_unique<GemmTileList>();
  for (size_t begin = 0; begin < tiles.size(); begin += kMaxGemmTiles) {
    const size_t count = std::min<size_t>(kMaxGemmTiles, tiles.size() - begin);
    std::copy(tiles.begin() + begin, tiles.begin() + begin + count, list->tiles);
    // x: the 256-row blocks of W vary fastest, so neighbouring blocks share one x tile.
    const dim3 grid(unsigned(w.rows() / kGemmRows), unsigned(count));
    w4a16_gemm_kernel<BN><<<grid, kGemmThreads, gemm_smem_bytes<BN>(), ctx.stream()>>>(
        w.tiles(), w.scales(), x, y, int(w.rows()), int(w.cols()), *list);
    DSQ_CUDA_CHECK_LAUNCH();
  }
}

// An expert's rows for the grouped GEMM, by tile width (128, 64, 32 rows): full 128-row
// tiles, and a remainder of up to 32 or 64 rows in a narrower tile (less wasted tensor
// work than a mostly empty 128-row one).
void add_gemm_tiles(int expert, int64_t begin, int64_t rows, std::vector<GemmTile> (&by_width)[3]) {
  int64_t r = 0;
  for (; rows - r > 64; r += 128) by_width[0].push_back({expert, int(begin + r), int(std::min<int64_t>(128, rows - r))});
  if (rows - r > 32) by_width[1].push_back({expert, int(begin + r), int(rows - r)});
  else if (r < rows) by_width[2].push_back({expert, int(begin + r), int(rows - r)});
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

void int4_force_decode_chunks(int chunks) {
  DSQ_CHECK(chunks == 0 || chunks == 2 || chunks == 4 || chunks == 8 || chunks == kInt4DecodeWholeK,
            "int4_force_decode_chunks: ", chunks, " is not 0, 2, 4, 8 or kInt4DecodeWholeK");
  g_forced_decode_chunks = chunks;
}

bool int4_gemm_supported(const Int4ExpertWeights& w) { return w.rows() % kGemmRows == 0; }

void int4_grouped_linear(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x,
                         const std::vector<int64_t>& offsets, float* y, __nv_bfloat16* dequant_scratch,
                         Int4Path path) {
  DSQ_CHECK(int64_t(offsets.size()) == w.experts() + 1, "int4_grouped_linear: ", offsets.size(),
            " offsets for ", w.experts(), " experts (need experts + 1)");
  DSQ_CHECK(offsets.front() == 0, "int4_grouped_linear: offsets must start at 0");
  for (size_t e = 0; e + 1 < offsets.size(); ++e)
    DSQ_CHECK(offsets[e + 1] >= offsets[e], "int4_grouped_linear: offsets decrease at expert ", e);
  DSQ_CHECK(path != Int4Path::GroupedGemm || int4_gemm_supported(w), "int4_grouped_linear: the grouped GEMM "
            "needs out-features divisible by ", kGemmRows, ", got ", w.rows());
  DSQ_CHECK(path != Int4Path::DequantCublas || dequant_scratch, "int4_grouped_linear: the dequantize + cuBLAS "
            "path needs a scratch buffer");
  const int64_t total = offsets.back();
  if (total == 0) return;
  std::vector<WorkItem> items;
  std::vector<GemmTile> gemm_tiles[3];
  // Rows of the decode kernel, adjacent experts' rows merged (zeroed first if it adds K
  // slices with atomics).
  std::vector<std::pair<int64_t, int64_t>> decode_ranges;
  for (int64_t e = 0; e < w.experts(); ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    Int4Path use = path;
    if (use == Int4Path::Auto) {
      if (rows < kInt4GemmMinRows) use = Int4Path::DecodeKernel;
      else if (int4_gemm_supported(w)) use = Int4Path::GroupedGemm;
      else use = dequant_scratch ? Int4Path::DequantCublas : Int4Path::DecodeKernel;
    }
    if (use == Int4Path::GroupedGemm) {
      add_gemm_tiles(int(e), offsets[e], rows, gemm_tiles);
    } else if (use == Int4Path::DequantCublas) {
      int4_dequantize_expert(ctx, w, e, dequant_scratch);
      bf16_linear_f32_out(ctx, x + offsets[e] * w.cols(), dequant_scratch, y + offsets[e] * w.rows(), rows,
                          w.rows(), w.cols());
    } else {
      if (!decode_ranges.empty() && decode_ranges.back().second == offsets[e]) decode_ranges.back().second = offsets[e + 1];
      else decode_ranges.emplace_back(offsets[e], offsets[e + 1]);
      for (int64_t r = 0; r < rows; r += kDecodeMaxRows)
        items.push_back({int(e), int(offsets[e] + r), int(std::min<int64_t>(kDecodeMaxRows, rows - r))});
    }
  }
  launch_gemm<128>(ctx, w, x, y, gemm_tiles[0]);
  launch_gemm<64>(ctx, w, x, y, gemm_tiles[1]);
  launch_gemm<32>(ctx, w, x, y, gemm_tiles[2]);
  if (!items.empty()) run_decode(ctx, w, x, y, items, decode_ranges);
}

void int4_grouped_swiglu(const GpuContext& ctx, const Int4ExpertWeights& gate_up, const __nv_bfloat16* x,
                         const std::vector<int64_t>& offsets, float limit, __nv_bfloat16* h, float* gate_up_out,
                         __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(gate_up.gate_up_interleaved(), "int4_grouped_swiglu: the weights are not a gate/up pair "
            "(build them with Int4ExpertWeights::gate_up)");
  int4_grouped_linear(ctx, gate_up, x, offsets, gate_up_out, dequant_scratch);
  const int64_t rows = offsets.back(), F = gate_up.rows() / 2;
  if (rows == 0) return;
  launch_dependent(ctx, swiglu_interleaved_kernel, dim3(unsigned((rows * F + 255) / 256)), dim3(256), 0,
                   static_cast<const float*>(gate_up_out), rows, int(F), limit, h);
}

void int4_linear(const GpuContext& ctx, const Int4ExpertWeights& w, int64_t expert,
                 const __nv_bfloat16* x, int64_t M, float* y, __nv_bfloat16* dequant_scratch) {
  DSQ_CHECK(expert >= 0 && expert < w.experts(), "int4_linear: expert ", expert, " out of range");
  std::vector<int64_t> offsets(size_t(w.experts() + 1), 0);
  for (int64_t e = expert + 1; e <= w.experts(); ++e) offsets[size_t(e)] = M;
  int4_grouped_linear(ctx, w, x, offsets, y, dequant_scratch);
}

}  // namespace dsq::cuda
