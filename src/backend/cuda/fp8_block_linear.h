// FP8 block-scaled linear layer (DeepSeek style) on the GPU:
//   y[M,N] = dequant(xq)[M,K] · dequant(W)[N,K]^T
// where W is f8_e4m3 with one fp32 scale per 128×128 block ([ceil(N/128), ceil(K/128)],
// row-major, as dsq stores it) and the activations (bf16 or fp32) are quantized on the
// fly to e4m3 with one fp32 scale per 1×128 run along K (scale = amax/448).
//
// The rows of W may be split into consecutive ranges that each read their own K input
// columns and write their own output matrix (Fp8Output): the groups of a grouped weight
// (attn.wo_a: range g reads x columns g·K.. and writes y columns g·R..) or several
// weights of one input concatenated at load time (linear_many's wq_a + wkv). Every
// range runs in the same launch; the activations are quantized once per call.
//
// Decode (M <= 64 rows) runs our own tensor-core kernel in a single launch: memory-bound,
// it quantizes x per block into shared memory, streams W once with 16-byte loads straight
// from the row-major checkpoint layout into the registers of FP8 wgmma's A operand (k is
// permuted the same way in both operands, so no re-layout is needed) and applies both
// scales in fp32 per 128-wide block; launched as a programmatic dependent, it streams W
// while the kernel before it finishes; large weights run two 128-row blocks per thread
// block (one quantization) where that measured faster. Larger M quantizes the
// activations once, then runs cuBLASLt's block-scaling mode per range (VEC128_32F for x,
// BLK128x128_32F for W; Hopper, cuBLAS >= 12.9), which has no algorithm for some small M
// (M = 1 on an H100): M is then padded to a multiple of 16. Where cuBLASLt has nothing at
// all, or K < 512 (where it computed wrong results on an H100), a plain CUDA-core kernel
// computes the same function (slowly).
#pragma once

#include <array>
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

// Which GEMM runs: Auto picks the decode kernel for M <= kFp8DecodeAutoRows (grouped
// weights: M <= kFp8DecodeMaxRows), cuBLASLt otherwise, and the fallback where cuBLASLt
// has no algorithm. The others force one path. (On an H100 cuBLASLt's block-scaled GEMM
// costs a fixed ~16-18 us at small M, per group: more than the decode kernel up to M = 16
// on V4-Flash's FP8 weights, and up to 64 for the 8 groups of wo_a; past 16 rows cuBLASLt
// wins on the single weights; bench/results/gpu-gemm-fp8.md.)
enum class Fp8Path { Auto, Decode, CublasLt, Fallback };
constexpr int64_t kFp8DecodeMaxRows = 64;
// How the decode kernel sums the K slices of a column block: fp32 atomics in the
// workspace (the default), or, as a test/benchmark option, through the shared memory of
// a thread-block cluster of the slices (2-8 slices, M <= 16; measured slower on an H100,
// see fp8_decode_kernel).
enum class Fp8SplitSum { Atomics, Cluster };
// The decode kernel's configuration of the last decode run: 256-wide K steps per block,
// 128-row column blocks per thread block, slices per cluster (1: no cluster).
struct Fp8DecodeConfig {
  int steps = 0, width = 0, cluster = 0;
};
constexpr int64_t kFp8DecodeAutoRows = 16;
// Most row ranges one call takes (V4-Flash's wo_a has 8 groups).
constexpr int kFp8MaxOutputs = 8;

// One range of a weight's rows and where its results go: for the weight rows
// n in [first, first + rows) of this range (ranges follow each other from row 0),
// y[m·ld + (n − first)] = x[m, x_col .. x_col + K) · W[n, :]ᵀ. Every range but the last
// must hold a multiple of 128 rows (one weight scale block never spans two ranges).
template <typename Y>
struct Fp8Output {
  Y* y;
  int64_t rows, ld, x_col;
};

class Fp8BlockLinear {
 public:
  // values: host e4m3 bytes [N,K]; scales: host fp32 [ceil(N/128), ceil(K/128)] row-major.
  // Copies both to the device once. `what` names the weight in error messages. `groups`:
  // the activation rows are groups·K wide (a grouped weight; see run()).
  Fp8BlockLinear(const uint8_t* values, const float* scales, int64_t N, int64_t K, const std::string& what,
                 int64_t groups = 1);
  // Test hooks: the scale orders cuBLASLt is told the operands use (default: the ones
  // it reads), and the GEMM path.
  void set_scale_orders(ScaleOrder act, ScaleOrder weight);
  void set_path(Fp8Path path) { path_ = path; }
  // Test/benchmark hook: 256-wide K steps per block of the decode kernel for M <= 16 (1,
  // 2 or 4; must divide K/256); 0 (the default) chooses by the weight's size.
  void set_decode_steps(int steps) {
    DSQ_CHECK(steps == 0 || steps == 1 || steps == 2 || steps == 4, what_, ": decode steps must be 0, 1, 2 or 4");
    decode_steps_ = steps;
  }
  // Test/benchmark hooks: 128-row column blocks per thread block of the decode kernel
  // (1, or 2 where it fits: M <= 16, 4 steps, no range boundary inside a block; 0: 2
  // where it fits and measured faster: a single K slice, or 9-16 rows), and how it sums
  // split K.
  void set_decode_width(int width) {
    DSQ_CHECK(width >= 0 && width <= 2, what_, ": decode width must be 0, 1 or 2");
    decode_width_ = width;
  }
  void set_decode_sum(Fp8SplitSum sum) { decode_sum_ = sum; }
  Fp8DecodeConfig last_decode() const { return last_decode_; }

  // Bytes of device scratch a call with M rows needs. Calls that run the decode kernel
  // (uses_decode(M)) need it zero-filled once when allocated and leave it zero again,
  // also when shared by several linears on one stream; the other paths need no zeroing
  // and leave data behind.
  size_t workspace_bytes(int64_t M) const;
  bool uses_decode(int64_t M) const;
  // y[M, N] bf16 = x[M, groups·K] bf16 · W^T with group g's N/groups rows reading x
  // columns [g·K, (g+1)·K) (groups > 1 needs N/groups % 128 == 0); x and y dense.
  void run(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, __nv_bfloat16* y, void* workspace);
  // fp32 activations x[M, groups·K] (rows x_ld apart, 16-byte aligned) into fp32 outputs
  // split over `count` row ranges (Fp8Output). The decode kernel reads and writes fp32
  // directly; the other paths quantize the fp32 values (no bf16 step) and have cuBLASLt
  // write fp32 (through bf16 only where it has no fp32-output algorithm).
  void run_f32(const GpuContext& ctx, const float* x, int64_t x_ld, int64_t M, const Fp8Output<float>* outs,
               int count, void* workspace);
  // The two halves of a non-decode run, exposed for the benchmark (GEMM time without the
  // quantization): quantize x into the workspace, then the GEMM on those codes.
  template <typename X>
  void quantize(const GpuContext& ctx, const X* x, int64_t x_ld, int64_t M, void* workspace);
  template <typename Y>
  void gemm_quantized(const GpuContext& ctx, int64_t M, const Fp8Output<Y>* outs, int count, void* workspace);
  bool decode_fits(int64_t M) const;
  // The path the last run took (never Auto).
  Fp8Path last_path() const { return last_path_; }

  int64_t rows() const { return N_; }
  // The e4m3 weight codes on the device, [N, K] row-major.
  const uint8_t* values() const { return values_.get(); }
  size_t values_bytes() const { return values_.bytes(); }
  int64_t cols() const { return K_; }

 private:
  struct Workspace;
  Workspace carve(void* workspace, int64_t M) const;
  template <typename X, typename Y>
  void launch_decode(const GpuContext& ctx, const X* x, int64_t x_ld, int64_t M, const Fp8Output<Y>* outs,
                     int count, const Workspace& ws);
  template <typename Y>
  void check_outputs(const Fp8Output<Y>* outs, int count) const;
  // Rows cuBLASLt runs for M (M itself, or M rounded up to 16), 0 if it has no algorithm
  // (asked for a dense range of N/groups rows).
  int64_t cublaslt_rows(const GpuContext& ctx, int64_t M);
  // Whether cuBLASLt has an algorithm for M rows × a range of `rows` rows written `ld`
  // apart as y_type (bf16 or fp32).
  bool has_plan(const GpuContext& ctx, int64_t M, int64_t rows, int64_t ld, cudaDataType_t y_type);
  void upload_weight_scales();
  // 256-wide K steps per block of the decode kernel for M rows, and the steps of a
  // weight large enough to be bandwidth-bound (0 where it is not).
  int decode_steps(int sm_count, int64_t M) const;
  int bandwidth_steps(int sm_count) const;

  int64_t N_, K_, groups_;
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
  int decode_width_ = 0;
  Fp8SplitSum decode_sum_ = Fp8SplitSum::Atomics;
  Fp8DecodeConfig last_decode_;
  // The non-decode path of the last quantize(): cuBLASLt rows (0: the fallback kernel).
  int64_t quantized_rows_ = 0;
  // (M, rows of the range, output row stride, output type) -> cuBLASLt algorithm from the
  // heuristic (ok == false: cuBLASLt has none).
  struct Plan {
    bool ok = false;
    cublasLtMatmulAlgo_t algo;
  };
  std::map<std::array<int64_t, 4>, Plan> plans_;
};

}  // namespace dsq::cuda
