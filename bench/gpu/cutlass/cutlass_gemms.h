// The CUTLASS 4.x Hopper kernels dsq_cutlass_bench compares with dsq's own, behind an
// interface free of CUTLASS types: each .cu under bench/gpu/cutlass/ instantiates a few
// kernels (compile time grows with every instantiation), the benchmark only calls them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace dsq::bench::cutlass_gemm {

// Which tile configuration runs. Prefill: 128x128 output tiles, persistent schedule.
// Decode: 128 weight rows x 16 tokens per tile (the token count is the short side of the
// wgmma), with CUTLASS's Stream-K scheduler, which can also split K over CTAs (a few
// tokens give too few output tiles to fill 132 SMs). The grouped GEMM uses the same two
// tile shapes with CUTLASS's group scheduler (no K split).
enum class Tile { Prefill, Decode };
// How the Decode tile's scheduler divides K over CTAs: CUTLASS's heuristic (0, which may
// choose data-parallel: one CTA per output tile), forced stream-K (kStreamK), or split-K
// into that many slices (>= 2). Prefill ignores it.
constexpr int kStreamK = -1;

// ---- W4A16: y[M, N] fp32 = x[M, K] bf16 · (q · s)[N, K]^T, group 128 along K ----

// Rewrites E experts' packed weights on the device, in place, from dsq's checkpoint form
// (int32 words [E][N][K/8], nibble i = input 8w+i, stored as q + 8) into what CUTLASS's
// mixed-input GEMM reads: two's complement nibbles, reordered so that the 16 values one
// thread converts are contiguous (example 55's "shuffle").
void int4_prepare_weights(void* packed, int64_t E, int64_t N, int64_t K);

size_t int4_workspace_bytes(Tile tile, int splits, int64_t M, int64_t N, int64_t K);
// One expert's GEMM. w: that expert's prepared weights; scales: its bf16 scales laid out
// [K/128][N] (N fastest; dsq stores [N][K/128]). Returns false (with a message on stderr)
// where CUTLASS rejects the problem.
bool int4_gemm(Tile tile, int splits, const __nv_bfloat16* x, int64_t M, const void* w,
               const __nv_bfloat16* scales, int64_t N, int64_t K, float* y, void* workspace, cudaStream_t stream);

// The routed experts of a MoE layer in one launch (CUTLASS's pointer-array grouped
// mixed-input GEMM, example 69): expert g of the list multiplies x rows
// [first[g], first[g] + rows[g]) (x sorted by expert, as dsq's int4_grouped_linear takes
// it) and writes the same rows of y. The problem list lives on the device (built once
// here), so a call costs one launch and no host-to-device copy.
class Int4GroupedGemm {
 public:
  Int4GroupedGemm(Tile tile, const std::vector<const void*>& w, const std::vector<const __nv_bfloat16*>& scales,
                  const std::vector<int64_t>& rows, int64_t N, int64_t K, const __nv_bfloat16* x, float* y);
  ~Int4GroupedGemm();
  Int4GroupedGemm(const Int4GroupedGemm&) = delete;
  Int4GroupedGemm& operator=(const Int4GroupedGemm&) = delete;
  size_t workspace_bytes() const;
  bool run(void* workspace, cudaStream_t stream) const;

  struct Impl;

 private:
  Impl* impl_;
};

// ---- FP8 block-scaled: y[M, N] bf16 = (xq · sx)[M, K] · (W · sw)[N, K]^T ----
// xq: e4m3 [M][K], sx: fp32 [K/128][M] (one per 1x128 run, M fastest); W: e4m3 [N][K],
// sw: fp32 [N/128][K/128] (dsq's storage order). Prefill computes y = xq·W^T directly;
// Decode computes y^T = W·xq^T (same memory, operands swapped).

size_t fp8_workspace_bytes(Tile tile, int splits, int64_t M, int64_t N, int64_t K);
bool fp8_gemm(Tile tile, int splits, const uint8_t* xq, const float* sx, int64_t M, const uint8_t* w, const float* sw,
              int64_t N, int64_t K, __nv_bfloat16* y, void* workspace, cudaStream_t stream);

}  // namespace dsq::bench::cutlass_gemm
