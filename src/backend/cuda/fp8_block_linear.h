// FP8 block-scaled linear layer (DeepSeek style) on the GPU:
//   y[M,N] = dequant(xq)[M,K] · dequant(W)[N,K]^T
// where W is f8_e4m3 with one fp32 scale per 128×128 block ([ceil(N/128), ceil(K/128)],
// row-major, as dsq stores it) and the bf16 activations are quantized on the fly to e4m3
// with one fp32 scale per 1×128 run along K (scale = amax/448).
//
// Decode (M <= 64 rows) runs our own tensor-core kernel in a single launch: memory-bound,
// it quantizes x per block, streams W once with 16-byte loads straight from the row-major
// checkpoint layout (k is permuted the same way in both mma operands, so no re-layout is
// needed) and applies both scales in fp32 per 128-wide block; launched as a programmatic
// dependent, it streams W while the kernel before it finishes. Larger M runs cuBLASLt's
// block-scaling mode (VEC128_32F for x, BLK128x128_32F for W; Hopper, cuBLAS >= 12.9),
// which has no algorithm for some
// small M (M = 1 on an H100): M is then padded to a multiple of 16. Where cuBLASLt has
// nothing at all, or K < 512 (where it computed wrong results on an H100), a plain
// CUDA-core kernel computes the same function (slowly).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// How a scale tensor is laid out in memory relative to its data matrix: consecutive
// scales run along K ("k-major", dsq's storage order) or along the other, outer
// dimension. cuBLASLt reads activation scales outer-major and weight scales k-major
// (checked on an H100 by the Fp8ScaleOrderIsTheDefault test).
enum class ScaleOrder { KMajor, OuterMajor };

// Which GEMM runs: Auto picks the decode kernel for M <= kFp8DecodeAutoRows, cuBLASLt
// otherwise, and the fallback where cuBLASLt has no algorithm. The others force one path.
// (On an H100 the decode kernel beats cuBLASLt up to M = 4..8 on V4-Flash's largest FP8
// weights and up to M = 32 on the small ones; its cost grows with M because every block
// quantizes its own copy of the activations.)
enum class Fp8Path { Auto, Decode, CublasLt, Fallback };
constexpr int64_t kFp8DecodeMaxRows = 64;
constexpr int64_t kFp8DecodeAutoRows = 8;

// Quantizes x[M,K] (bf16, K % 128 == 0) to e4m3 xq[M,K] plus fp32 scales x_scales in
// `order`; an outer-major layout holds `scale_rows` >= M rows per K block (padding for
// GEMMs that need a rounded-up M). Device pointers.
void quantize_act_fp8_1x128(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, int64_t K,
                            uint8_t* xq, float* x_scales, ScaleOrder order, int64_t scale_rows);

class Fp8BlockLinear {
 public:
  // values: host e4m3 bytes [N,K]; scales: host fp32 [ceil(N/128), ceil(K/128)] row-major.
  // Copies both to the device once. `what` names the weight in error messages.
  Fp8BlockLinear(const uint8_t* values, const float* scales, int64_t N, int64_t K,
                 const std::string& what);
  // Test hooks: the scale orders cuBLASLt is told the operands use (default: the ones
  // it reads), and the GEMM path.
  void set_scale_orders(ScaleOrder act, ScaleOrder weight);
  void set_path(Fp8Path path) { path_ = path; }
  // Test/benchmark hook: 256-wide K steps per block of the decode kernel for M <= 8 (1,
  // 2 or 4; must divide K/256); 0 (the default) chooses by the weight's size.
  void set_decode_steps(int steps) {
    DSQ_CHECK(steps == 0 || steps == 1 || steps == 2 || steps == 4, what_, ": decode steps must be 0, 1, 2 or 4");
    decode_steps_ = steps;
  }

  // Bytes of device scratch run() needs for M rows. The workspace must be zero-filled
  // once when allocated; every run leaves it fit for the next (the decode kernel zeroes
  // what it accumulated into), also when shared by several linears on one stream.
  size_t workspace_bytes(int64_t M) const;
  // y[M,N] bf16 = x[M,K] bf16 · W^T. `workspace` holds workspace_bytes(M) bytes.
  void run(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, __nv_bfloat16* y,
           void* workspace);
  // The decode kernel on fp32 activations x[M, K] (dense, 16-byte aligned), writing fp32
  // y[M, N]: the same arithmetic as run() with Fp8Path::Decode minus the two conversions.
  // Needs decode_fits(M).
  void run_decode_f32(const GpuContext& ctx, const float* x, int64_t M, float* y, void* workspace);
  bool decode_fits(int64_t M) const;
  // The path the last run() took (never Auto).
  Fp8Path last_path() const { return last_path_; }

  int64_t rows() const { return N_; }
  int64_t cols() const { return K_; }

 private:
  struct Workspace;
  Workspace carve(void* workspace, int64_t M) const;
  template <typename X, typename Y>
  void launch_decode(const GpuContext& ctx, const X* x, int64_t M, Y* y, const Workspace& ws);
  // Rows cuBLASLt runs for M (M itself, or M rounded up to 16), 0 if it has no algorithm.
  int64_t cublaslt_rows(const GpuContext& ctx, int64_t M);
  bool has_plan(const GpuContext& ctx, int64_t M);
  void run_cublaslt(const GpuContext& ctx, const uint8_t* xq, const float* x_scales, int64_t M,
                    __nv_bfloat16* y);
  void upload_weight_scales();
  int decode_steps(int sm_count) const;

  int64_t N_, K_;
  std::string what_;
  DeviceBuffer<uint8_t> values_;
  std::vector<float> host_scales_;  // [ceil(N/128), ceil(K/128)] row-major
  DeviceBuffer<float> scales_;      // in weight_order_
  DeviceBuffer<float> kmajor_scales_;  // for our kernels, always k-major
  ScaleOrder act_order_ = ScaleOrder::OuterMajor;
  ScaleOrder weight_order_ = ScaleOrder::KMajor;
  Fp8Path path_ = Fp8Path::Auto;
  Fp8Path last_path_ = Fp8Path::Auto;
  int decode_steps_ = 0;
  // M -> cuBLASLt algorithm from the heuristic (ok == false: cuBLASLt has none).
  struct Plan {
    bool ok = false;
    cublasLtMatmulAlgo_t algo;
  };
  std::map<int64_t, Plan> plans_;
};

}  // namespace dsq::cuda
