// MXFP4 linear layers on the GPU, W4A16-style: the release's routed-expert format (e2m1
// values, two per byte, one e8m0 power-of-two scale per 32 inputs) kept at 4.25 bits per
// weight on the device, bf16 activations, fp32 accumulation and output.
//
// At load the weights are re-laid out once (on the GPU) into "mma tiles" like the INT4
// ones (int4_linear.h): for every 16-row × 64-input piece of W, each lane of a warp owns
// one 16-byte word holding the 32 e2m1 codes of its tensor-core A fragments, arranged so
// that two shifts and one logic operation put a fragment register's two codes into bf16
// bit positions, and one bf16 multiply by 2^126 makes them the exact e2m1 values (the
// e2m1 subnormal 0.5 included). The piece's 32 scale bytes are re-laid out next to it: one
// 32-bit word per lane holding the scales of its rows g and g+8 for both 32-input groups.
// Scales are applied in fp32 to each group's partial product: exact (a power of two).
//
// Execution paths, chosen per expert by mxfp4_grouped_linear():
//  - the decode kernel (mma.sync) for experts with <= kMxfp4DecodeMaxRows rows: a block
//    per 16 rows of W over all of K, its 8 warps' K slices added in shared memory, plain
//    stores (no atomics, no zeroing launch);
//  - more rows: the expert dequantized (exactly) to bf16 in a caller's scratch buffer,
//    then cuBLAS BF16 GEMM; without scratch, the decode kernel on 8-row pieces (correct,
//    reads the weights once per 8 rows).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// Rows per work item of the decode kernel (one 8-row mma token tile).
constexpr int64_t kMxfp4DecodeMaxRows = 8;

// E experts of identical shape [N, K], on the device in the kernel's layout.
class Mxfp4ExpertWeights {
 public:
  // values: host bytes [E][N][K/2] (low nibble = even input); scales: host e8m0 bytes
  // [E][N][K/32] (value 2^(e-127); 255 is NaN). N % 16 == 0 and K % 512 == 0.
  Mxfp4ExpertWeights(const uint8_t* values, const uint8_t* scales, int64_t E, int64_t N, int64_t K,
                     const std::string& what);

  // Whether a [N, K] weight has the shape the kernels take.
  static bool fits(int64_t N, int64_t K) { return N > 0 && K > 0 && N % 16 == 0 && K % 512 == 0; }

  int64_t experts() const { return E_; }
  int64_t rows() const { return N_; }
  int64_t cols() const { return K_; }
  const uint4* tiles() const { return tiles_.get(); }
  const uint32_t* scales() const { return scales_.get(); }
  // Bytes one expert occupies (codes + scales): what a decode step reads per active expert.
  size_t expert_bytes() const { return size_t(N_) * size_t(K_) / 2 + size_t(N_) * size_t(K_ / 32); }

 private:
  int64_t E_, N_, K_;
  DeviceBuffer<uint4> tiles_;
  DeviceBuffer<uint32_t> scales_;
};

// Grouped MXFP4 linear: x[rows, K] bf16 holds the rows of all experts, sorted by expert;
// expert e owns rows [offsets[e], offsets[e+1]) (host array of E+1 entries). Writes
// y[rows, N] fp32 = x_row · W_eᵀ. `dequant_scratch` (N·K bf16, may be null): the
// many-row path (see the file comment).
void mxfp4_grouped_linear(const GpuContext& ctx, const Mxfp4ExpertWeights& w, const __nv_bfloat16* x,
                          const std::vector<int64_t>& offsets, float* y, __nv_bfloat16* dequant_scratch = nullptr);

// Dense MXFP4 (one expert): y[M, N] fp32 = x[M, K] · W_expertᵀ.
void mxfp4_linear(const GpuContext& ctx, const Mxfp4ExpertWeights& w, int64_t expert, const __nv_bfloat16* x,
                  int64_t M, float* y, __nv_bfloat16* dequant_scratch = nullptr);

// Expert e's weight as bf16 [N, K] (exact: e2m1 · 2^k fits bf16), on the device.
void mxfp4_dequantize_expert(const GpuContext& ctx, const Mxfp4ExpertWeights& w, int64_t expert,
                             __nv_bfloat16* out);

}  // namespace dsq::cuda
