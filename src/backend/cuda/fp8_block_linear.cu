// FP8 block-scaled linear: activation quantization, the decode kernel (row ranges in one
// launch), the cuBLASLt block-scaled GEMM and a CUDA-core fallback kernel (see
// fp8_block_linear.h).
#include "backend/cuda/fp8_block_linear.h"

#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "backend/cuda/dependent_launch.h"

namespace dsq::cuda {

namespace {

constexpr int kBlock = 128;
constexpr float kE4m3Max = 448.0f;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Eight consecutive activations as fp32, from bf16 (16 bytes) or fp32 (32 bytes).
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
// The same from the raw 16-byte words (loaded earlier, converted only where used).
template <typename X>
__device__ __forceinline__ void unpack8(const uint4 (&raw)[sizeof(X) / 2], float (&v)[8]) {
  if constexpr (std::is_same_v<X, float>) {
    const float* f = reinterpret_cast<const float*>(raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = f[i];
  } else {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
  }
}

// The e4m3 code of v·inv (round to nearest, saturating), as every kernel here quantizes.
__device__ __forceinline__ uint32_t e4m3_code(float v, float inv) {
  return uint32_t(__nv_cvt_float_to_fp8(v * inv, __NV_SATFINITE, __NV_E4M3));
}
// The same for v[0..3], packed little-endian (two conversions of two values each).
__device__ __forceinline__ uint32_t e4m3_code4(const float* v, float inv) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(v[0] * inv, v[1] * inv), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(v[2] * inv, v[3] * inv), __NV_SATFINITE, __NV_E4M3);
  return lo | hi << 16;
}

// 16 threads per (row, 128-wide K block), 8 elements each: one 16- or 32-byte load and
// one 8-byte store per thread, amax by shuffles within the 16 lanes. Memory-bound.
template <typename X>
__global__ void quantize_act_kernel(const X* __restrict__ x, int64_t x_ld, int M, int K, uint8_t* __restrict__ xq,
                                    float* __restrict__ scales, bool outer_major, int scale_rows) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // 8-element chunk
  const int chunks_per_row = K / 8;
  const bool in = i < int64_t(M) * chunks_per_row;
  const int row = in ? int(i / chunks_per_row) : 0, c = in ? int(i % chunks_per_row) : 0;
  float v[8] = {};
  if (in) load8(x + size_t(row) * x_ld + c * 8, v);
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));
  for (int off = 8; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (!in) return;
  // An all-zero block gets scale 1 (its codes are all zero either way).
  const float scale = amax > 0.0f ? amax / kE4m3Max : 1.0f;
  const float inv = 1.0f / scale;
  uint2 packed{0u, 0u};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    packed.x |= e4m3_code(v[j], inv) << (8 * j);
    packed.y |= e4m3_code(v[4 + j], inv) << (8 * j);
  }
  *reinterpret_cast<uint2*>(xq + size_t(row) * K + c * 8) = packed;
  const int kb = c / 16;
  if (c % 16 == 0) scales[outer_major ? size_t(kb) * scale_rows + row : size_t(row) * (K / kBlock) + kb] = scale;
}

__device__ float e4m3_to_float(uint8_t v) {
  return float(*reinterpret_cast<const __nv_fp8_e4m3*>(&v));
}

// Decode GEMM: y[M, N] = quant(x) · W^T for M <= 64, in one launch.
//
// Grid: (N/(128·CB) column blocks) × (K/(256·R) slices). Each block finds the output
// range (DecodeOutputs) its 128·CB rows belong to, quantizes its own slice of that range's
// x columns (1×128 blocks, exactly as quantize_act_kernel does; x is small and stays in
// L2) and multiplies it with 128·CB rows of W (one 16-row tile per warp, one m64 wgmma
// operand per warpgroup), R steps of 256 inputs with the next step's weights loading
// during the current one. CB = 2 (16 warps) shares one quantization between two 128-row
// blocks: half the activation reads from L2 and half the quantization work per thread
// at the same registers per thread (one block per SM instead of two).
// A single slice stores y directly (each 8-token tile passes through shared memory so
// that every thread then owns 4 consecutive columns of one token). Split K sums its
// slices in one of two ways:
// - cluster (a test/benchmark option, Fp8SplitSum): the slices of a column block are
//   one thread-block cluster (<= 8); each leaves its fp32 partial sums in its shared
//   memory, and after a cluster barrier every block adds a share of the columns over
//   all blocks' shared memory (in slice order) and stores y. No workspace traffic and
//   no second round trip through L2, yet on an H100 slower where it counts: wo_a / wo_b
//   lost 14-20 points of copy bandwidth, and wq_a+wkv, 0.5 us faster at M = 1 when
//   repeated alone, made the CSA decode unit (linear_many) 0.4-0.8 us slower at M = 1-2
//   (session 4b in bench/results/gpu-gemm-fp8.md).
// - atomics: the blocks add their partial sums into the workspace accumulator with one
//   16-byte vector atomic per thread (sm_90), and the last block to finish a column block
//   (counted with an atomic ticket) converts those columns and zeroes the accumulator
//   and its ticket again, so no separate memset or conversion launch is needed.
// It is launched as a programmatic dependent (dependent_launch.h): its weight loads are
// issued before it waits for the previous kernel, which may have written x, and before
// it touches the workspace that the previous run may still be finalizing.
//
// Swapped operands: W is the A operand (registers), the tokens are B (shared memory, 8
// per tile) of wgmma m64n8k32 e4m3, the warpgroup-wide FP8 tensor-core instruction
// (sm_90a). mma.sync with e4m3 operands has no FP8 datapath on sm_90: ptxas turns it
// into e4m3->f16 conversions plus f16 HMMAs, and at 16 tokens those conversions made the
// kernel issue-bound (measured: 58-59 % of copy at M = 16, 77-80 % at M <= 8). Each
// warp's 16 rows form one m16 slice of the m64 A fragment, whose lanes must hold bytes
// k = 4t..4t+3 and 16+4t..16+4t+3 of rows g and g+8; we instead load 16 contiguous
// bytes k = 16t..16t+15 of a 64-wide block per row and read them as two k32 steps, step s
// taking bytes 16t+8s..+3 as the "4t" part and 16t+8s+4..+7 as the "16+4t" part. The
// quantized x is written to shared memory in that same permuted k order, so the dot
// products are unchanged, and W needs no re-layout.
constexpr int kDecStep = 256;                  // K per step
constexpr int kDecWarps = 8;                   // per column block, 16 rows of N each
constexpr int kDecCols = kDecWarps * 16;       // N per column block
constexpr int kDecMaxCluster = 8;              // slices per cluster (the portable limit)

// The row ranges of one decode launch (Fp8Output, as kernel parameters).
template <typename Y>
struct DecodeOutputs {
  int count;
  int end[kFp8MaxOutputs];    // one past the range's last weight row
  int x_col[kFp8MaxOutputs];  // its first input column
  int ld[kFp8MaxOutputs];     // its output row stride
  Y* y[kFp8MaxOutputs];
};

// wgmma m64n(8·MT)k32 (f32 += e4m3 × e4m3), A from registers, B (MT 8-token tiles)
// through a shared-memory descriptor; accumulate == 0 overwrites d. d[4m .. 4m+3] is
// token tile m's C fragment (rows g, g+8 × tokens 2t, 2t+1), as in mma.m16n8k32.
template <int MT>
__device__ void wgmma_e4m3(float (&d)[4 * MT], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint64_t b_desc,
                           int accumulate);
#define DSQ_ACC4(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
template <>
__device__ __forceinline__ void wgmma_e4m3<1>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t b_desc, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 "
               "{%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, %8, p, 1, 1;\n}\n"
               : DSQ_ACC4(d, 0)
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b_desc), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_e4m3<2>(float (&d)[8], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t b_desc, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 "
               "{%0,%1,%2,%3,%4,%5,%6,%7}, "
               "{%8,%9,%10,%11}, %12, p, 1, 1;\n}\n"
               : DSQ_ACC4(d, 0), DSQ_ACC4(d, 4)
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b_desc), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_e4m3<4>(float (&d)[16], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t b_desc, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
               "{%16,%17,%18,%19}, %20, p, 1, 1;\n}\n"
               : DSQ_ACC4(d, 0), DSQ_ACC4(d, 4), DSQ_ACC4(d, 8), DSQ_ACC4(d, 12)
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b_desc), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_e4m3<8>(float (&d)[32], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t b_desc, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
               "{%32,%33,%34,%35}, %36, p, 1, 1;\n}\n"
               : DSQ_ACC4(d, 0), DSQ_ACC4(d, 4), DSQ_ACC4(d, 8), DSQ_ACC4(d, 12), DSQ_ACC4(d, 16), DSQ_ACC4(d, 20),
                 DSQ_ACC4(d, 24), DSQ_ACC4(d, 28)
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b_desc), "r"(accumulate));
}
#undef DSQ_ACC4

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from touching accumulators across the asynchronous wgmma.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Shared-memory descriptor of a K-major operand in the 128-byte swizzle (as
// int4_linear.cu's prefill GEMM uses it): rows of 128 k bytes, 16-byte chunk c of row r
// stored at chunk c ^ (r % 8), 8-row groups 1024 bytes apart (stride byte offset), leading
// offset unused (1). A k32 step within the row starts 32 bytes further.
__device__ __forceinline__ uint64_t smem_desc_sw128(const void* smem) {
  const uint32_t addr = uint32_t(__cvta_generic_to_shared(smem));
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// Thread-block cluster primitives (sm_90): a full barrier of all the cluster's threads
// (release/acquire: shared-memory writes before it are visible to every block after
// it), this block's rank, and a 16-byte load from the same offset in the shared memory
// of the cluster's block `rank`.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ unsigned cluster_blocks() {
  unsigned n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
}
__device__ __forceinline__ float4 load_peer(const float* local, unsigned rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
               : "=r"(remote)
               : "r"(uint32_t(__cvta_generic_to_shared(local))), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(remote)
               : "memory");
  return v;
}

// 4 blocks of 64 inputs × rows {g, g+8} of one step: 8 independent 16-byte loads per lane
// (zeros for a warp past N, which still takes part in its warpgroup's wgmma).
__device__ __forceinline__ void load_step(uint4 (&wv)[4][2], const uint8_t* r0, int K, bool active) {
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    wv[b][0] = active ? __ldcs(reinterpret_cast<const uint4*>(r0 + 64 * b)) : make_uint4(0, 0, 0, 0);
    wv[b][1] = active ? __ldcs(reinterpret_cast<const uint4*>(r0 + size_t(8) * K + 64 * b)) : make_uint4(0, 0, 0, 0);
  }
}

__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

// Blocks per SM the decode kernel is compiled for: four (<= 64 registers) for one step
// per block and one token tile, whose weights then stream from 4 blocks per SM; three
// for two tiles (which spill at 64); two for the double-buffered steps, which need more
// registers than that; wide blocks (CB = 2, twice the threads) half as many, at the
// same registers per thread.
constexpr int decode_min_blocks(int MT, int R, int CB) {
  const int narrow = MT > 2 ? 1 : R > 1 ? 2 : MT == 1 ? 4 : 3;
  return narrow / CB > 0 ? narrow / CB : 1;
}

// X, Y: the activation and output types (bf16, or fp32 for CudaOps' fp32 activations,
// which saves it a conversion launch on each side). cluster_sum: the slices of a column
// block form one cluster and sum through shared memory (MT <= 2 only); it also issues a
// 2-step block's second step before the wait (the small weights it serves are latency-
// rather than bandwidth-bound).
template <int MT, int R, int CB, typename X, typename Y>
__global__ void __launch_bounds__(kDecWarps * 32 * CB, decode_min_blocks(MT, R, CB))
    fp8_decode_kernel(const uint8_t* __restrict__ w, const float* __restrict__ w_scales, const X* __restrict__ x,
                      int64_t x_ld, float* __restrict__ acc, unsigned* __restrict__ tickets,
                      const DecodeOutputs<Y> out, int M, int N, int K, bool cluster_sum) {
  constexpr int kSlice = R * kDecStep;
  constexpr int kWarps = kDecWarps * CB, kCols = kDecCols * CB;
  constexpr int kStride = kCols + 4;  // floats; conflict-free fragment writes
  // Quantized x as wgmma B, in permuted k order (see above): 128-wide K block h and token
  // tile m form one 1024-byte swizzle atom at (h·MT + m)·1024 (smem_desc_sw128), so the
  // MT tiles of one K block are one m64n(8·MT) operand.
  __shared__ __align__(1024) uint8_t xs[MT * 8 * kSlice];
  __shared__ float x_scale[MT * 8][2 * R];
  __shared__ float w_scale[CB][2 * R];  // per 128-row column block and 128-wide K block
  __shared__ __align__(16) float tile[8][kStride];
  // Cluster sums: this block's partial sums of all (up to 16) tokens, read by its peers.
  __shared__ __align__(16) float partial[MT <= 2 ? MT * 8 : 1][kStride];
  __shared__ bool last_block;
  const int k0 = blockIdx.y * kSlice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int c0 = blockIdx.x * kCols;
  const int n0 = c0 + warp * 16;
  const bool active = n0 < N;
  const uint8_t* wrow = w + size_t(n0 + g) * K + k0 + 16 * t;
  allow_dependent_launch();

  // With 4 steps, two are in flight from the start (both register buffers), the next one
  // issued as soon as a step's wgmmas are done with its buffer. With 2 steps the second
  // is issued only after the wait: requesting all of a block's weights before it cost
  // 4-6 points of copy bandwidth at M = 1-16 on an H100 (with 4 steps, two early steps
  // gained 3-4 points at M = 1-8). Cluster sums (small, latency-bound weights) issue a
  // 2-step block's second step before the wait too.
  constexpr bool kEarly = R >= 4;
  const bool second_early = R == 2 && cluster_sum;
  uint4 wv[R > 1 ? 2 : 1][4][2];
  load_step(wv[0], wrow, K, active);
  if constexpr (kEarly) load_step(wv[1], wrow + kDecStep, K, active);
  if constexpr (R == 2)
    if (second_early) load_step(wv[1], wrow + kDecStep, K, active);
  // The range of this block's rows (ranges start on 128-row boundaries).
  int range = 0;
  while (range + 1 < out.count && c0 >= out.end[range]) ++range;
  const int first = range ? out.end[range - 1] : 0;
  Y* const y = out.y[range];
  const int y_ld = out.ld[range];
  const X* const xr = x + out.x_col[range] + k0;
  // One token tile: the weight scales of the block's slice (constant) are requested
  // before the wait, so that no step waits for one after its tensor-core work (on an
  // H100 0.5-1 point of copy bandwidth at M = 1-8 for wq_b, wo_a, wo_b). Two tiles read
  // them in the steps: preloaded, wide blocks at M = 9-16 lost 2.5-5 points (wq_b M = 16
  // 90.3 -> 85.4 %), for reasons not found.
  constexpr bool kPreloadScales = MT == 1;
  const int scale_cb = threadIdx.x / (2 * R), scale_h = threadIdx.x % (2 * R);
  const bool loads_scale = kPreloadScales && scale_cb < CB && c0 + scale_cb * kBlock < N;
  const float my_scale =
      loads_scale ? __ldg(w_scales + size_t(c0 / kBlock + scale_cb) * (K / kBlock) + k0 / kBlock + scale_h) : 0.0f;
  wait_for_previous_kernel();  // x is written, the workspace is clean
  // Quantize the x slice: half a warp per (row, 128-block), 8 values per lane, in rounds
  // of a fixed trip count, unrolled, so that a round's loads are all in flight together
  // (one after another they cost more than the block's weight streaming). A round holds
  // at most 32 registers of raw activations next to the two weight steps in flight.
  constexpr int kTasks = 8 * MT * R / kWarps;  // per warp: MT·8 rows × 2R blocks over 2·kWarps half-warps
  static_assert(kTasks >= 1 && 8 * MT * R % kWarps == 0, "quantization tasks must divide among the warps");
  constexpr int kRawWords = sizeof(X) / 2;  // 16-byte words per 8 values
  constexpr int kRound = kTasks < 8 / kRawWords ? kTasks : 8 / kRawWords;
  const int hl = lane % 16;
  // Where this lane's 8 bytes (physical k = h·128 + 8·hl) go in the permuted k order: in
  // 64-block hl / 8, 16-byte part (hl % 8) / 2, k32 step hl % 2, the low 4 bytes at
  // logical 4·part, the high 4 at 16 + 4·part of that step.
  const int logical = (hl / 8) * 64 + (hl % 2) * 32 + 4 * ((hl % 8) / 2);  // within the 128-block
#pragma unroll
  for (int round = 0; round < kTasks; round += kRound) {
    uint4 raw[kRound][kRawWords];
#pragma unroll
    for (int it = 0; it < kRound; ++it) {
      const int p = 2 * (warp + (round + it) * kWarps) + lane / 16, r = p / (2 * R), h = p % (2 * R);
      const uint4* src = reinterpret_cast<const uint4*>(xr + size_t(r) * x_ld + h * kBlock + hl * 8);
#pragma unroll
      for (int q = 0; q < kRawWords; ++q) raw[it][q] = r < M ? src[q] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < kRound; ++it) {
      const int p = 2 * (warp + (round + it) * kWarps) + lane / 16, r = p / (2 * R), h = p % (2 * R);
      float v[8];
      unpack8<X>(raw[it], v);
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
      for (int off = 8; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
      // Rows past M (all zero) get scale 0: they contribute nothing.
      const float scale = r >= M ? 0.0f : amax > 0.0f ? amax / kE4m3Max : 1.0f;
      const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
      uint8_t* row = xs + (h * MT + r / 8) * 1024 + (r % 8) * 128;
      const int n = r % 8;
      *reinterpret_cast<uint32_t*>(row + 16 * ((logical / 16) ^ n) + logical % 16) = e4m3_code4(v, inv);
      *reinterpret_cast<uint32_t*>(row + 16 * ((logical / 16 + 1) ^ n) + logical % 16) = e4m3_code4(v + 4, inv);
      if (hl == 0) x_scale[r][h] = scale;
    }
  }
  if (kPreloadScales && scale_cb < CB) w_scale[scale_cb][scale_h] = my_scale;
  // wgmma reads xs through the async proxy: make the generic-proxy stores visible to it.
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();

  float sum[MT][4] = {};
#pragma unroll
  for (int step = 0; step < R; ++step) {
    if (!kEarly && step + 1 < R && !second_early)
      load_step(wv[(step + 1) % 2], wrow + (step + 1) * kDecStep, K, active);
    uint4 (&cur)[4][2] = wv[step % 2];
    float part[2][4 * MT];  // the two 128-wide scale blocks of the step
    wgmma_fence();
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      // The 64-block's two permuted k32 steps: bytes 64·(b%2) and +32 of its atoms' rows.
      const uint8_t* base = xs + (2 * step + b / 2) * MT * 1024 + 64 * (b % 2);
      wgmma_e4m3<MT>(part[b / 2], cur[b][0].x, cur[b][1].x, cur[b][0].y, cur[b][1].y, smem_desc_sw128(base),
                     b % 2);
      wgmma_e4m3<MT>(part[b / 2], cur[b][0].z, cur[b][1].z, cur[b][0].w, cur[b][1].w, smem_desc_sw128(base + 32), 1);
    }
    wgmma_commit();
    wgmma_wait_all();
    // The buffer is free again: the step after next streams into it during this one's sums.
    if (kEarly && step + 2 < R) load_step(cur, wrow + (step + 2) * kDecStep, K, active);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
      for (int j = 0; j < 4 * MT; ++j) fence_operand(part[half][j]);
      const int h = 2 * step + half;
      const float ws = kPreloadScales ? w_scale[warp / kDecWarps][h]
                       : active ? __ldg(w_scales + size_t(n0 / kBlock) * (K / kBlock) + k0 / kBlock + h)
                                : 0.0f;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float s0 = ws * x_scale[m * 8 + 2 * t][h];
        const float s1 = ws * x_scale[m * 8 + 2 * t + 1][h];
        sum[m][0] += part[half][4 * m] * s0;
        sum[m][1] += part[half][4 * m + 1] * s1;
        sum[m][2] += part[half][4 * m + 2] * s0;
        sum[m][3] += part[half][4 * m + 3] * s1;
      }
    }
  }
  constexpr int kQuads = kCols / 4;  // 4-column groups of the block
  if constexpr (MT <= 2) {
    if (cluster_sum) {
      // C fragments (row g / g+8, tokens 2t, 2t+1) of every tile into `partial`; after the
      // barrier, block `rank` of C sums the 4-column groups i ≡ rank (mod C) over the
      // blocks in rank order and stores them.
      if (active) {
        const int col = warp * 16 + g;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          partial[m * 8 + 2 * t][col] = sum[m][0];
          partial[m * 8 + 2 * t + 1][col] = sum[m][1];
          partial[m * 8 + 2 * t][col + 8] = sum[m][2];
          partial[m * 8 + 2 * t + 1][col + 8] = sum[m][3];
        }
      }
      cluster_sync();
      const unsigned rank = cluster_rank(), blocks = cluster_blocks();
      for (int i = int(threadIdx.x * blocks + rank); i < M * kQuads; i += int(blockDim.x * blocks)) {
        const int tok = i / kQuads, cc = 4 * (i % kQuads), c = c0 + cc;
        if (c >= N) continue;
        float4 v[kDecMaxCluster];
#pragma unroll
        for (int q = 0; q < kDecMaxCluster; ++q)
          if (q < int(blocks)) v[q] = load_peer(&partial[tok][cc], unsigned(q));
        float4 s = v[0];
#pragma unroll
        for (int q = 1; q < kDecMaxCluster; ++q)
          if (q < int(blocks)) s.x += v[q].x, s.y += v[q].y, s.z += v[q].z, s.w += v[q].w;
        Y* at = y + size_t(tok) * y_ld + (c - first);
        store(at, s.x), store(at + 1, s.y), store(at + 2, s.z), store(at + 3, s.w);
      }
      cluster_sync();  // the peers read this block's shared memory until here
      return;
    }
  }
  // Per 8-token tile: C fragments into shared memory, then thread i takes token
  // i / kQuads, columns 4·(i % kQuads) .. +3.
  const bool single_slice = gridDim.y == 1;
  const int tr = threadIdx.x / kQuads, tc = 4 * (threadIdx.x % kQuads);
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m * 8 >= M) break;
    if (active) {
      const int col = warp * 16 + g;
      tile[2 * t][col] = sum[m][0];
      tile[2 * t + 1][col] = sum[m][1];
      tile[2 * t][col + 8] = sum[m][2];
      tile[2 * t + 1][col + 8] = sum[m][3];
    }
    __syncthreads();
    const int tok = m * 8 + tr, c = c0 + tc;
    if (tok < M && c < N) {
      const float4 v = *reinterpret_cast<const float4*>(&tile[tr][tc]);
      if (single_slice) {
        Y* at = y + size_t(tok) * y_ld + (c - first);
        store(at, v.x), store(at + 1, v.y), store(at + 2, v.z), store(at + 3, v.w);
      } else {
        atomicAdd(reinterpret_cast<float4*>(acc + size_t(tok) * N + c), v);
      }
    }
    __syncthreads();
  }
  if (single_slice) return;
  // Ticket: the block that completes a column block finalizes it.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_block = atomicAdd(&tickets[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  for (int i = threadIdx.x; i < M * kQuads; i += blockDim.x) {
    const int r = i / kQuads, c = c0 + 4 * (i % kQuads);
    if (c >= N) continue;
    float4* a = reinterpret_cast<float4*>(acc + size_t(r) * N + c);
    const float4 v = __ldcg(a);
    Y* at = y + size_t(r) * y_ld + (c - first);
    store(at, v.x), store(at + 1, v.y), store(at + 2, v.z), store(at + 3, v.w);
    *a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  if (threadIdx.x == 0) tickets[blockIdx.x] = 0;
}

// The decode kernel's launch configuration (cluster > 1: `cluster` slices of a column
// block form one cluster), as a programmatic dependent like launch_dependent().
cudaLaunchConfig_t decode_config(const GpuContext& ctx, dim3 grid, dim3 block, unsigned cluster,
                                 cudaLaunchAttribute (&attrs)[2]) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.stream = ctx.stream();
  attrs[0] = {};
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  attrs[1] = {};
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = 1;
  attrs[1].val.clusterDim.y = cluster;
  attrs[1].val.clusterDim.z = 1;
  config.attrs = attrs;
  config.numAttrs = cluster > 1 ? 2 : 1;
  return config;
}

// Launches fp8_decode_kernel<MT, R, CB> with R steps per slice, summing split K as `sum`
// says. Returns the cluster size (1: atomics or a single slice).
template <int MT, int R, int CB, typename X, typename Y>
int launch_decode_kernel(const GpuContext& ctx, Fp8SplitSum sum, const uint8_t* w, const float* w_scales, const X* x,
                         int64_t x_ld, float* acc, unsigned* tickets, const DecodeOutputs<Y>& o, int M, int N, int K) {
  const auto kernel = fp8_decode_kernel<MT, R, CB, X, Y>;
  const dim3 grid(unsigned(ceil_div(N, kDecCols * CB)), unsigned(K / (R * kDecStep)));
  const dim3 block(kDecWarps * 32 * CB);
  const int slices = int(grid.y);
  int cluster = 1;
  if (sum == Fp8SplitSum::Cluster) {
    DSQ_CHECK(MT <= 2 && slices >= 2 && slices <= kDecMaxCluster, "FP8 decode: cluster sums need 2-", kDecMaxCluster,
              " slices and M <= 16 (", slices, " slices, M=", M, ")");
    cluster = slices;
  }
  cudaLaunchAttribute attrs[2];
  const cudaLaunchConfig_t config = decode_config(ctx, grid, block, unsigned(cluster), attrs);
  DSQ_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, w, w_scales, x, x_ld, acc, tickets, o, M, N, K, cluster > 1));
  return cluster;
}

// Fallback GEMM: a 16×16 thread block computes a 64×64 tile of y, each thread 4×4
// outputs, with operands dequantized to fp32 in shared memory one 32-wide K slab at a
// time. Correct for any shape; only meant for shapes cuBLASLt refuses. xq rows are
// xq_ld apart; the activation scales of K block kb and row m are at
// xs[kb·scale_rows + m] (outer-major) or xs[m·scale_ld + kb] (k-major).
constexpr int kFbTile = 64, kFbSlab = 32;
__global__ void fp8_block_fallback_kernel(const uint8_t* __restrict__ xq, int64_t xq_ld,
                                          const float* __restrict__ xs, bool xs_outer, int64_t scale_rows,
                                          int64_t scale_ld, const uint8_t* __restrict__ w,
                                          const float* __restrict__ ws,  // k-major blocks
                                          __nv_bfloat16* __restrict__ y, int64_t y_ld, int M, int N, int K) {
  __shared__ float xt[kFbTile][kFbSlab + 1];
  __shared__ float wt[kFbTile][kFbSlab + 1];
  const int m0 = blockIdx.y * kFbTile, n0 = blockIdx.x * kFbTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int kbs = K / kBlock;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kFbSlab) {
    const int kb = k0 / kBlock;
    for (int i = threadIdx.x; i < kFbTile * kFbSlab; i += blockDim.x) {
      const int r = i / kFbSlab, c = i % kFbSlab;
      const int m = m0 + r, n = n0 + r;
      float xv = 0.0f, wv = 0.0f;
      if (m < M) {
        const float s = xs[xs_outer ? kb * scale_rows + m : m * scale_ld + kb];
        xv = e4m3_to_float(xq[size_t(m) * xq_ld + k0 + c]) * s;
      }
      if (n < N) wv = e4m3_to_float(w[size_t(n) * K + k0 + c]) * ws[size_t(n / kBlock) * kbs + kb];
      xt[r][c] = xv;
      wt[r][c] = wv;
    }
    __syncthreads();
    for (int c = 0; c < kFbSlab; ++c)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += xt[ty * 4 + i][c] * wt[tx * 4 + j][c];
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < M && n < N) y[size_t(m) * y_ld + n] = __float2bfloat16(acc[i][j]);
    }
}

// dst[m, c] = src[m, c] for m < M, c < cols (rows src_ld / dst_ld apart), as bf16 or fp32.
template <typename Y>
__global__ void copy_rows_kernel(const __nv_bfloat16* __restrict__ src, int64_t src_ld, int64_t M, int64_t cols,
                                 Y* __restrict__ dst, int64_t dst_ld) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * cols) return;
  const int64_t m = i / cols, c = i % cols;
  if constexpr (std::is_same_v<Y, float>) dst[m * dst_ld + c] = __bfloat162float(src[m * src_ld + c]);
  else dst[m * dst_ld + c] = src[m * src_ld + c];
}

struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  ~LtDescriptors() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Column-major view: A = W as [K,N] transposed, B = xq as [K,M] (columns ldb apart),
// D = y as [N,M] (columns ldd apart, bf16 or fp32).
void make_descriptors(LtDescriptors& d, int64_t M, int64_t N, int64_t K, int64_t ldb, int64_t ldd,
                      cudaDataType_t d_type, const float* w_scales, const float* x_scales) {
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scales, sizeof(w_scales)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scales, sizeof(x_scales)));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_8F_E4M3, K, N, K));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_8F_E4M3, K, M, ldb));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.d, d_type, N, M, ldd));
}

template <typename Y>
constexpr cudaDataType_t data_type() {
  return std::is_same_v<Y, float> ? CUDA_R_32F : CUDA_R_16BF;
}

// Quantizes x[M, K] (rows x_ld apart; bf16 or fp32, K % 128 == 0) to dense e4m3 xq[M, K]
// plus fp32 scales in `order`; an outer-major layout holds `scale_rows` >= M rows per K
// block (padding for GEMMs that need a rounded-up M). Device pointers.
template <typename X>
void quantize_act_fp8_1x128(const GpuContext& ctx, const X* x, int64_t x_ld, int64_t M, int64_t K, uint8_t* xq,
                            float* x_scales, ScaleOrder order, int64_t scale_rows) {
  DSQ_CHECK(K % kBlock == 0, "quantize_act_fp8_1x128: K=", K, " is not a multiple of 128");
  DSQ_CHECK(scale_rows >= M, "quantize_act_fp8_1x128: scale_rows ", scale_rows, " < M ", M);
  DSQ_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0 && (x_ld * int64_t(sizeof(X))) % 16 == 0,
            "quantize_act_fp8_1x128: activation rows must be 16-byte aligned");
  const int64_t chunks = M * (K / 8);
  if (chunks == 0) return;
  const int threads = 256;
  quantize_act_kernel<X><<<unsigned(ceil_div(chunks, threads)), threads, 0, ctx.stream()>>>(
      x, x_ld, int(M), int(K), xq, x_scales, order == ScaleOrder::OuterMajor, int(scale_rows));
  DSQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

Fp8BlockLinear::Fp8BlockLinear(const uint8_t* values, const float* scales, int64_t N, int64_t K,
                               const std::string& what, int64_t groups)
    : N_(N), K_(K), groups_(groups), what_(what) {
  DSQ_CHECK(N > 0 && K > 0, what, ": empty FP8 weight [", N, ", ", K, "]");
  DSQ_CHECK(K % kBlock == 0, what, ": FP8 block linear needs in-features divisible by 128, got ", K);
  DSQ_CHECK(N % 8 == 0, what, ": FP8 block linear needs out-features divisible by 8, got ", N);
  DSQ_CHECK(groups >= 1 && groups <= kFp8MaxOutputs && N % groups == 0 && (groups == 1 || (N / groups) % kBlock == 0),
            what, ": ", N, " rows do not split into ", groups, " groups of whole 128-row blocks");
  values_ = DeviceBuffer<uint8_t>::from_host(values, size_t(N * K));
  host_scales_.assign(scales, scales + ceil_div(N, kBlock) * (K / kBlock));
  kmajor_scales_ = DeviceBuffer<float>::from_host(host_scales_);
  upload_weight_scales();
}

void Fp8BlockLinear::upload_weight_scales() {
  const int64_t nb = ceil_div(N_, kBlock), kb = K_ / kBlock;
  std::vector<float> laid(host_scales_.size());
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = 0; j < kb; ++j)
      laid[weight_order_ == ScaleOrder::KMajor ? i * kb + j : j * nb + i] = host_scales_[i * kb + j];
  scales_ = DeviceBuffer<float>::from_host(laid);
}

void Fp8BlockLinear::set_scale_orders(ScaleOrder act, ScaleOrder weight) {
  act_order_ = act;
  weight_order_ = weight;
  upload_weight_scales();
  plans_.clear();
}

// Scratch for one call with M rows (Mp = M rounded up to 16; XW = groups·K, the
// activation width), each part 256-byte aligned:
//   decode: tickets [N/128] and an fp32 accumulator [64, N], both left zero by every run;
//   others: e4m3 codes [Mp, XW], activation scales [Mp, XW/128], a bf16 [Mp, N] staging
//   output (padded rows, fp32 outputs).
struct Fp8BlockLinear::Workspace {
  unsigned* tickets;
  float* acc;
  uint8_t* codes;
  float* scales;
  __nv_bfloat16* staging;
  size_t bytes;
};

Fp8BlockLinear::Workspace Fp8BlockLinear::carve(void* base, int64_t M) const {
  const auto align = [](size_t b) { return (b + 255) / 256 * 256; };
  const int64_t Mp = ceil_div(M, 16) * 16, XW = groups_ * K_;
  auto* p = static_cast<uint8_t*>(base);
  size_t off = 0;
  const auto take = [&](size_t bytes) {
    uint8_t* at = p ? p + off : nullptr;
    off += align(bytes);
    return at;
  };
  Workspace w{};
  w.tickets = reinterpret_cast<unsigned*>(take(size_t(ceil_div(N_, kDecCols)) * sizeof(unsigned)));
  // Fixed size, so the zero region never moves with M (other paths write past it).
  w.acc = reinterpret_cast<float*>(take(size_t(kFp8DecodeMaxRows * N_) * sizeof(float)));
  w.codes = take(size_t(Mp * XW));
  w.scales = reinterpret_cast<float*>(take(size_t(Mp * (XW / kBlock)) * sizeof(float)));
  w.staging = reinterpret_cast<__nv_bfloat16*>(take(size_t(Mp * N_) * sizeof(__nv_bfloat16)));
  w.bytes = off;
  return w;
}

size_t Fp8BlockLinear::workspace_bytes(int64_t M) const { return carve(nullptr, M).bytes; }

int Fp8BlockLinear::bandwidth_steps(int sm_count) const {
  // Longer slices (fewer atomics, each block streams more, two steps in flight) while
  // every SM keeps a block: V4-Flash's wq_b, wo_a and wo_b (1,024 units each) run 256
  // blocks of 4 steps, measured on an H100 4-12 points of copy bandwidth better than 512
  // of 2 steps at M = 1-16 (bench/results/gpu-gemm-fp8.md, session 4).
  const int64_t slices = K_ / kDecStep, units = ceil_div(N_, kDecCols) * slices;
  for (int steps : {4, 2})
    if (slices % steps == 0 && units / steps >= int64_t(sm_count)) return steps;
  return 0;
}

int Fp8BlockLinear::decode_steps(int sm_count, int64_t M) const {
  const int64_t slices = K_ / kDecStep;
  if (M > 16) return 1;
  if (decode_steps_) {
    DSQ_CHECK(slices % decode_steps_ == 0, what_, ": ", decode_steps_, " decode steps do not divide K=", K_);
    return decode_steps_;
  }
  // Small weights (wq_a, wkv: 4-12 column blocks): one step per block, the most blocks.
  if (const int steps = bandwidth_steps(sm_count)) return steps;
  return 1;
}

bool Fp8BlockLinear::has_plan(const GpuContext& ctx, int64_t M, int64_t rows, int64_t ld, cudaDataType_t y_type) {
  const std::array<int64_t, 4> key{M, rows, ld, int64_t(y_type)};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.ok;
  LtDescriptors d;
  // cuBLASLt offers no algorithm without a scale pointer: any device pointer stands in.
  make_descriptors(d, M, rows, K_, groups_ * K_, ld, y_type, scales_.get(), kmajor_scales_.get());
  Plan plan;
  cublasLtMatmulPreference_t pref = nullptr;
  DSQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = ctx.workspace_bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.blas_lt(), d.op, d.a, d.b, d.d, d.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    plan.ok = true;
    plan.algo = result.algo;
  }
  plans_.emplace(key, plan);
  return plan.ok;
}

int64_t Fp8BlockLinear::cublaslt_rows(const GpuContext& ctx, int64_t M) {
  // On an H100 (cuBLAS 13.0) block-scaled FP8 with K = 256 and N = 256 returned garbage
  // (M = 37; [128, 256] was right), as K = 128 did: below K = 512 the fallback runs.
  if (K_ < 512) return 0;
  const int64_t R = N_ / groups_;
  if (has_plan(ctx, M, R, N_, CUDA_R_16BF)) return M;
  const int64_t padded = ceil_div(M, 16) * 16;
  if (padded != M && has_plan(ctx, padded, R, N_, CUDA_R_16BF)) return padded;
  return 0;
}

template <typename Y>
void Fp8BlockLinear::check_outputs(const Fp8Output<Y>* outs, int count) const {
  DSQ_CHECK(count >= 1 && count <= kFp8MaxOutputs, what_, ": ", count, " output ranges (1 to ", kFp8MaxOutputs, ")");
  int64_t rows = 0;
  for (int i = 0; i < count; ++i) {
    const Fp8Output<Y>& o = outs[i];
    DSQ_CHECK(o.rows > 0 && (i + 1 == count || o.rows % kBlock == 0) && o.ld >= o.rows && o.x_col >= 0 &&
                  o.x_col % kBlock == 0 && o.x_col + K_ <= groups_ * K_,
              what_, ": output range ", i, " (", o.rows, " rows, ld ", o.ld, ", input column ", o.x_col,
              ") does not fit (internal)");
    rows += o.rows;
  }
  DSQ_CHECK(rows == N_, what_, ": output ranges cover ", rows, " of ", N_, " rows (internal)");
}

template <typename X, typename Y>
void Fp8BlockLinear::launch_decode(const GpuContext& ctx, const X* x, int64_t x_ld, int64_t M,
                                   const Fp8Output<Y>* outs, int count, const Workspace& ws) {
  DSQ_CHECK(decode_fits(M), what_, ": FP8 decode kernel needs M <= 64, N % 16 == 0 and K % 256 == 0 (M=", M,
            ", N=", N_, ", K=", K_, ")");
  DSQ_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0 && (x_ld * int64_t(sizeof(X))) % 16 == 0, what_,
            ": activation rows must be 16-byte aligned for the decode kernel");
  DecodeOutputs<Y> o{};
  o.count = count;
  int64_t end = 0;
  for (int i = 0; i < count; ++i) {
    end += outs[i].rows;
    o.end[i] = int(end);
    o.x_col[i] = int(outs[i].x_col);
    o.ld[i] = int(outs[i].ld);
    o.y[i] = outs[i].y;
  }
  const int steps = decode_steps(ctx.sm_count(), M);
  const int64_t slices = K_ / (steps * kDecStep);
  // Wide blocks (two column blocks sharing one quantization) need 4 steps, <= 16 tokens
  // and no range boundary inside a block. Measured on an H100 (session 4b): a single
  // slice gains at any M (wq_b M = 1 / 16: 88.6 -> 93.7 / 80.4 -> 90.3 % of copy), split
  // K gains at 9-16 tokens (wo_b M = 16: 70.0 -> 72.6 %) but loses at 1-8 (81.0 -> 77.0
  // at M = 1).
  bool wide_fits = M <= 16 && steps == 4;
  for (int i = 0; i + 1 < count; ++i) wide_fits = wide_fits && o.end[i] % (2 * kDecCols) == 0;
  DSQ_CHECK(decode_width_ != 2 || wide_fits, what_, ": wide decode blocks need M <= 16, 4 steps and ranges of ",
            2 * kDecCols, " rows");
  const int width = decode_width_ == 2 || (decode_width_ == 0 && wide_fits && (slices == 1 || M > 8)) ? 2 : 1;
  const float* wsc = kmajor_scales_.get();
#define DSQ_FP8_DECODE(MT, R, CB)                                                                      \
  launch_decode_kernel<MT, R, CB, X, Y>(ctx, decode_sum_, values_.get(), wsc, x, x_ld, ws.acc, ws.tickets, o, \
                                        int(M), int(N_), int(K_))
  int cluster = 1;
  if (M <= 8 && steps == 4) cluster = width == 2 ? DSQ_FP8_DECODE(1, 4, 2) : DSQ_FP8_DECODE(1, 4, 1);
  else if (M <= 8 && steps == 2) cluster = DSQ_FP8_DECODE(1, 2, 1);
  else if (M <= 8) cluster = DSQ_FP8_DECODE(1, 1, 1);
  else if (M <= 16 && steps == 4) cluster = width == 2 ? DSQ_FP8_DECODE(2, 4, 2) : DSQ_FP8_DECODE(2, 4, 1);
  else if (M <= 16 && steps == 2) cluster = DSQ_FP8_DECODE(2, 2, 1);
  else if (M <= 16) cluster = DSQ_FP8_DECODE(2, 1, 1);
  else if (M <= 32) cluster = DSQ_FP8_DECODE(4, 1, 1);
  else cluster = DSQ_FP8_DECODE(8, 1, 1);
  last_decode_ = {steps, width, cluster};
#undef DSQ_FP8_DECODE
  last_path_ = Fp8Path::Decode;
}

bool Fp8BlockLinear::decode_fits(int64_t M) const {
  return M >= 1 && M <= kFp8DecodeMaxRows && N_ % 16 == 0 && K_ % kDecStep == 0;
}

bool Fp8BlockLinear::uses_decode(int64_t M) const {
  // A grouped weight costs cuBLASLt one GEMM per group (~14 us each on an H100 at small
  // M): the decode kernel's one launch stays faster up to its 64 rows (wo_a at M = 32:
  // 29 us against 112 us).
  const int64_t auto_rows = groups_ > 1 ? kFp8DecodeMaxRows : kFp8DecodeAutoRows;
  return path_ == Fp8Path::Decode || (path_ == Fp8Path::Auto && M <= auto_rows && decode_fits(M));
}

template <typename X>
void Fp8BlockLinear::quantize(const GpuContext& ctx, const X* x, int64_t x_ld, int64_t M, void* workspace) {
  const Workspace ws = carve(workspace, M);
  quantized_rows_ = path_ == Fp8Path::Fallback ? 0 : cublaslt_rows(ctx, M);
  const bool lt = quantized_rows_ > 0;
  quantize_act_fp8_1x128(ctx, x, x_ld, M, groups_ * K_, ws.codes, ws.scales, lt ? act_order_ : ScaleOrder::OuterMajor,
                         lt ? quantized_rows_ : M);
}
template void Fp8BlockLinear::quantize<__nv_bfloat16>(const GpuContext&, const __nv_bfloat16*, int64_t, int64_t,
                                                      void*);
template void Fp8BlockLinear::quantize<float>(const GpuContext&, const float*, int64_t, int64_t, void*);

template <typename Y>
void Fp8BlockLinear::gemm_quantized(const GpuContext& ctx, int64_t M, const Fp8Output<Y>* outs, int count,
                                    void* workspace) {
  check_outputs(outs, count);
  const Workspace ws = carve(workspace, M);
  const int64_t lt_rows = quantized_rows_, XW = groups_ * K_, kb = K_ / kBlock;
  const auto copy_out = [&](const __nv_bfloat16* staged, const Fp8Output<Y>& o) {
    copy_rows_kernel<<<unsigned(ceil_div(M * o.rows, 256)), 256, 0, ctx.stream()>>>(staged, N_, M, o.rows, o.y, o.ld);
    DSQ_CUDA_CHECK_LAUNCH();
  };
  int64_t first = 0;
  for (int i = 0; i < count; ++i) {
    const Fp8Output<Y>& o = outs[i];
    const uint8_t* w = values_.get() + first * K_;
    const uint8_t* codes = ws.codes + o.x_col;
    __nv_bfloat16* staged = ws.staging + first;
    if (lt_rows > 0) {
      DSQ_CHECK(groups_ == 1 || weight_order_ == ScaleOrder::KMajor, what_,
                ": grouped weights need k-major weight scales (internal)");
      DSQ_CHECK(act_order_ == ScaleOrder::OuterMajor || o.x_col == 0, what_,
                ": input column offsets need outer-major activation scales (internal)");
      // Straight into y where cuBLASLt has an algorithm for its type and stride; else
      // (padded rows computing garbage, or no such algorithm) into the bf16 staging rows.
      const bool direct = lt_rows == M && has_plan(ctx, M, o.rows, o.ld, data_type<Y>());
      DSQ_CHECK(direct || has_plan(ctx, lt_rows, o.rows, N_, CUDA_R_16BF), what_,
                ": cuBLASLt has no block-scaled algorithm for ", lt_rows, " x ", o.rows, " x ", K_);
      void* dst = direct ? static_cast<void*>(o.y) : static_cast<void*>(staged);
      const int64_t ld = direct ? o.ld : N_;
      const cudaDataType_t type = direct ? data_type<Y>() : CUDA_R_16BF;
      LtDescriptors d;
      const float* w_scales = scales_.get() + (first / kBlock) * kb;
      const float* x_scales = ws.scales + (o.x_col / kBlock) * lt_rows;
      make_descriptors(d, lt_rows, o.rows, K_, XW, ld, type, w_scales, x_scales);
      const float alpha = 1.0f, beta = 0.0f;
      DSQ_CUBLAS_CHECK(cublasLtMatmul(ctx.blas_lt(), d.op, &alpha, w, d.a, codes, d.b, &beta, dst, d.d, dst, d.d,
                                      &plans_.at({lt_rows, o.rows, ld, int64_t(type)}).algo, ctx.workspace(),
                                      ctx.workspace_bytes(), ctx.stream()));
      if (!direct) copy_out(staged, o);
      last_path_ = Fp8Path::CublasLt;
    } else {
      constexpr bool bf16_out = std::is_same_v<Y, __nv_bfloat16>;
      __nv_bfloat16* dst = bf16_out ? reinterpret_cast<__nv_bfloat16*>(o.y) : staged;
      const dim3 grid(unsigned(ceil_div(o.rows, kFbTile)), unsigned(ceil_div(M, kFbTile)));
      fp8_block_fallback_kernel<<<grid, 256, 0, ctx.stream()>>>(
          codes, XW, ws.scales + (o.x_col / kBlock) * M, true, M, XW / kBlock, w,
          kmajor_scales_.get() + (first / kBlock) * kb, dst, bf16_out ? o.ld : N_, int(M), int(o.rows), int(K_));
      DSQ_CUDA_CHECK_LAUNCH();
      if (!bf16_out) copy_out(staged, o);
      last_path_ = Fp8Path::Fallback;
    }
    first += o.rows;
  }
}
template void Fp8BlockLinear::gemm_quantized<__nv_bfloat16>(const GpuContext&, int64_t,
                                                            const Fp8Output<__nv_bfloat16>*, int, void*);
template void Fp8BlockLinear::gemm_quantized<float>(const GpuContext&, int64_t, const Fp8Output<float>*, int, void*);

void Fp8BlockLinear::run(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, __nv_bfloat16* y,
                         void* workspace) {
  DSQ_CHECK(M > 0, what_, ": FP8 linear called with ", M, " rows");
  const int64_t R = N_ / groups_;
  std::vector<Fp8Output<__nv_bfloat16>> outs;
  for (int64_t g = 0; g < groups_; ++g) outs.push_back({y + g * R, R, N_, g * K_});
  check_outputs(outs.data(), int(outs.size()));
  if (uses_decode(M)) {
    launch_decode(ctx, x, groups_ * K_, M, outs.data(), int(outs.size()), carve(workspace, M));
    return;
  }
  quantize(ctx, x, groups_ * K_, M, workspace);
  gemm_quantized(ctx, M, outs.data(), int(outs.size()), workspace);
}

void Fp8BlockLinear::run_f32(const GpuContext& ctx, const float* x, int64_t x_ld, int64_t M,
                             const Fp8Output<float>* outs, int count, void* workspace) {
  DSQ_CHECK(M > 0, what_, ": FP8 linear called with ", M, " rows");
  check_outputs(outs, count);
  const Workspace ws = carve(workspace, M);
  if (uses_decode(M)) {
    launch_decode(ctx, x, x_ld, M, outs, count, ws);
    return;
  }
  quantize(ctx, x, x_ld, M, workspace);
  gemm_quantized(ctx, M, outs, count, workspace);
}

}  // namespace dsq::cuda
