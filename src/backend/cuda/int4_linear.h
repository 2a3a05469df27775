// W4A16 linear layers on the GPU: int4 weights with one bf16 scale per 128 inputs
// (compressed-tensors `pack-quantized`, group 128, symmetric), bf16 activations, fp32
// accumulation and output. Built for the routed experts of DeepSeek-V4.
//
// At load the packed weights are re-laid out once into "mma tiles": for every 16-row
// × 64-column piece of W, each of the 32 lanes of a warp owns one 16-byte word holding
// exactly the 32 nibbles of its tensor-core A fragments for four 16×16 sub-tiles. The
// decode kernel then streams weights with one coalesced 16-byte load per lane, turns
// nibbles into bf16 with two integer/bf16 operations per pair, and applies the group
// scale in fp32 after each 128-wide group's partial product (exact: q is small).
//
// Execution paths, chosen per expert by int4_grouped_linear():
//  - tensor-core decode kernels (mma.sync), for experts with few rows (< kInt4GemmMinRows;
//    forced: <= 64 rows per item of work): memory-bound, read each weight once per item;
//    items of <= 8 rows take a block per 16 rows of W over all of K (partial sums added
//    in shared memory, plain stores), longer ones split K over blocks (fp32 atomics);
//  - grouped prefill GEMM (Hopper wgmma), for experts with more rows: the nibbles become
//    bf16(q·s) in registers and feed the tensor cores directly, no bf16 copy of W;
//  - dequantize the expert to bf16 in a scratch buffer, then cuBLAS BF16 GEMM: only
//    where the GEMM cannot run (out-features not a multiple of 256) and the caller gave
//    scratch, or when forced (benchmark comparison).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// Rows per work item of the decode kernel (more rows are cut into items of this size).
// Experts with more rows need `dequant_scratch` only where int4_gemm_supported() is false.
constexpr int64_t kDecodeMaxRows = 64;
// Experts with at least this many rows run the grouped GEMM (Int4Path::Auto). Below, the
// decode kernel's 8-row token tiles waste less tensor work than a 32-row GEMM tile and
// the work is memory-bound anyway (measured on an H100: bench/results/gpu-gemm.md).
constexpr int64_t kInt4GemmMinRows = 9;

// Which kernels int4_grouped_linear() uses: Auto chooses per expert by its row count
// (above); the others force one path for every expert (tests, benchmark comparisons).
enum class Int4Path { Auto, DecodeKernel, GroupedGemm, DequantCublas };

// E experts of identical shape [N, K], on the device in the kernel's layout.
class Int4ExpertWeights {
 public:
  // packed: host int32 [E][N][K/8] (nibble i of a word = input 8w+i, stored as q + 8);
  // scales: host bf16 bits [E][N][K/128]. N % 16 == 0 and K % 512 == 0.
  Int4ExpertWeights(const int32_t* packed, const uint16_t* scales, int64_t E, int64_t N, int64_t K,
                    const std::string& what);

  // W1 and W3 of E experts ([F, K] each, same layouts as above) as one [2F, K] weight
  // whose 16-row tiles hold 8 gate rows then the 8 matching up rows, for
  // int4_grouped_swiglu().
  static Int4ExpertWeights gate_up(const int32_t* w1, const uint16_t* s1, const int32_t* w3,
                                   const uint16_t* s3, int64_t E, int64_t F, int64_t K,
                                   const std::string& what);
  bool gate_up_interleaved() const { return gate_up_; }

  int64_t experts() const { return E_; }
  int64_t rows() const { return N_; }
  int64_t cols() const { return K_; }
  const uint4* tiles() const { return tiles_.get(); }
  const float* scales() const { return scales_.get(); }  // [E][K/128][N] fp32
  // Bytes one expert occupies in checkpoint form (nibbles + bf16 scales): what a decode
  // step must read from memory per active expert.
  size_t expert_bytes() const { return size_t(N_) * size_t(K_) / 2 + size_t(N_) * size_t(K_ / 128) * 2; }

 private:
  int64_t E_, N_, K_;
  bool gate_up_ = false;
  DeviceBuffer<uint4> tiles_;
  DeviceBuffer<float> scales_;
};

// Grouped W4A16: x[rows, K] bf16 holds the rows of all experts, sorted by expert; expert
// e owns rows [offsets[e], offsets[e+1]) (host array of E+1 entries; experts with no
// rows cost nothing). Writes y[rows, N] fp32 = x_row · W_e^T. `dequant_scratch`
// (N*K bf16, may be null) enables the dequantize + cuBLAS path.
void int4_grouped_linear(const GpuContext& ctx, const Int4ExpertWeights& w, const __nv_bfloat16* x,
                         const std::vector<int64_t>& offsets, float* y,
                         __nv_bfloat16* dequant_scratch = nullptr, Int4Path path = Int4Path::Auto);

// Whether the grouped prefill GEMM can run on these weights (N % 256 == 0).
bool int4_gemm_supported(const Int4ExpertWeights& w);

// Benchmark hook, which decode kernel runs: 2, 4 or 8 forces the split-K kernel (atomics
// into y, zeroed first) with that K slice per block in 64-wide chunks for items of <= 16
// rows; kInt4DecodeWholeK forces the whole-K kernel (a block per 16 rows of W over all of
// K, plain stores) for items of <= 8 rows; 0 (the default) chooses by the number of items.
constexpr int kInt4DecodeWholeK = -1;
void int4_force_decode_chunks(int chunks);

// The routed experts' first half with their activation: for weights built with
// Int4ExpertWeights::gate_up(), h[rows, F] bf16 = SiLU(min(x·W1^T, limit)) ⊙
// clamp(x·W3^T, -limit, limit) (DeepSeek-V4's clamped SwiGLU). The grouped GEMM writes
// gate_up_out [rows, 2F] fp32, then one elementwise pass applies the activation. (A
// version that applied it in the GEMM's last split-K block measured slower on an H100:
// the memory fence that ordering needs lengthened every block by a round trip.)
void int4_grouped_swiglu(const GpuContext& ctx, const Int4ExpertWeights& gate_up, const __nv_bfloat16* x,
                         const std::vector<int64_t>& offsets, float limit, __nv_bfloat16* h, float* gate_up_out,
                         __nv_bfloat16* dequant_scratch = nullptr);

// Dense W4A16 (one expert): y[M, N] fp32 = x[M, K] · W_expert^T.
void int4_linear(const GpuContext& ctx, const Int4ExpertWeights& w, int64_t expert,
                 const __nv_bfloat16* x, int64_t M, float* y,
                 __nv_bfloat16* dequant_scratch = nullptr);

// Expert e's weight as bf16 [N, K] (value = bf16(q * scale)), on the device.
void int4_dequantize_expert(const GpuContext& ctx, const Int4ExpertWeights& w, int64_t expert,
                            __nv_bfloat16* out);

}  // namespace dsq::cuda
