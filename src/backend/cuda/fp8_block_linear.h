// FP8 block-scaled linear layer (DeepSeek style) on the GPU:
//   y[M,N] = dequant(xq)[M,K] · dequant(W)[N,K]^T
// where W is f8_e4m3 with one fp32 scale per 128×128 block ([ceil(N/128), ceil(K/128)],
// row-major, as dsq stores it) and the bf16 activations are quantized on the fly to e4m3
// with one fp32 scale per 1×128 run along K (scale = amax/448).
//
// The GEMM runs in cuBLASLt's block-scaling mode (VEC128_32F for x, BLK128x128_32F for
// W; Hopper, cuBLAS >= 12.9). Where cuBLASLt offers no algorithm for a shape, a plain
// CUDA-core kernel of our own computes the same function (slowly) so results never
// depend on library support.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include <cuda_bf16.h>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// How a scale tensor is laid out in memory relative to its data matrix: consecutive
// scales run along K ("k-major", dsq's storage order) or along the other, outer
// dimension. cuBLASLt documents one order; the test harness checks which one it reads.
enum class ScaleOrder { KMajor, OuterMajor };

// Quantizes x[M,K] (bf16, K % 128 == 0) to e4m3 xq[M,K] plus fp32 scales x_scales
// (M × K/128, in `order`). Device pointers.
void quantize_act_fp8_1x128(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, int64_t K,
                            uint8_t* xq, float* x_scales, ScaleOrder order);

class Fp8BlockLinear {
 public:
  // values: host e4m3 bytes [N,K]; scales: host fp32 [ceil(N/128), ceil(K/128)] row-major.
  // Copies both to the device once. `what` names the weight in error messages.
  Fp8BlockLinear(const uint8_t* values, const float* scales, int64_t N, int64_t K,
                 const std::string& what);
  // Test hook: the scale orders cuBLASLt is told the operands use (default: the
  // documented ones); drops cached plans.
  void set_scale_orders(ScaleOrder act, ScaleOrder weight);
  // Forces the CUDA-core fallback kernel (to test it on a GPU where cuBLASLt works).
  void force_fallback(bool on) { force_fallback_ = on; }

  // Bytes of device scratch run() needs for M rows.
  static size_t workspace_bytes(int64_t M, int64_t K);
  // y[M,N] bf16 = x[M,K] bf16 · W^T. `workspace` holds workspace_bytes(M, K) bytes.
  void run(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, __nv_bfloat16* y,
           void* workspace);
  // The same GEMM on already-quantized activations (xq, scales in act_order()).
  void run_quantized(const GpuContext& ctx, const uint8_t* xq, const float* x_scales, int64_t M,
                     __nv_bfloat16* y);
  // True when the last run went through cuBLASLt.
  bool last_run_used_cublaslt() const { return last_used_lt_; }

  ScaleOrder act_order() const { return act_order_; }
  int64_t rows() const { return N_; }
  int64_t cols() const { return K_; }

 private:
  bool run_cublaslt(const GpuContext& ctx, const uint8_t* xq, const float* x_scales, int64_t M,
                    __nv_bfloat16* y);
  void upload_weight_scales();

  int64_t N_, K_;
  std::string what_;
  DeviceBuffer<uint8_t> values_;
  std::vector<float> host_scales_;  // [ceil(N/128), ceil(K/128)] row-major
  DeviceBuffer<float> scales_;      // in weight_order_
  ScaleOrder act_order_ = ScaleOrder::OuterMajor;
  ScaleOrder weight_order_ = ScaleOrder::KMajor;
  bool force_fallback_ = false;
  bool last_used_lt_ = false;
  // M -> cuBLASLt algorithm found by the heuristic (empty = none: use the fallback).
  struct Plan {
    bool ok = false;
    cublasLtMatmulAlgo_t algo;
  };
  std::map<int64_t, Plan> plans_;
};

}  // namespace dsq::cuda
