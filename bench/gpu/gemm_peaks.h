// The compute limits the GEMM benchmarks print their prefill rows against, measured in
// the same run at 8192³: cuBLAS BF16, and cuBLASLt FP8 with one scale per tensor (the
// fastest FP8 mode Hopper has). Also the host-side random inputs they and the benchmarks
// use: finite, non-zero values.
#pragma once

#include <cstdint>
#include <vector>

#include <cublasLt.h>
#include <cuda_bf16.h>

#include "backend/cuda/bf16_linear.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gpu_context.h"
#include "bench/gpu/kernel_timer.h"
#include "core/error.h"

namespace dsq::bench {

// A 64-bit LCG stream per seed.
inline uint64_t next_random(uint64_t& state) {
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  return state;
}
inline uint64_t random_state(uint64_t seed) { return seed * 2654435761ull + 1; }

// bf16 uniform in ±[0.25, 0.75)·scale, random sign.
inline std::vector<__nv_bfloat16> random_bf16(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<__nv_bfloat16> v(n);
  uint64_t s = random_state(seed);
  for (auto& x : v) {
    const float u = float(next_random(s) >> 40) / float(1 << 24);  // [0, 1)
    x = __float2bfloat16(scale * (u < 0.5f ? -(0.25f + u) : u - 0.25f));
  }
  return v;
}

// e4m3 codes, any finite non-zero value.
inline std::vector<uint8_t> random_fp8(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  uint64_t s = random_state(seed);
  for (auto& b : v) {
    uint8_t x = uint8_t(next_random(s) >> 56);
    if ((x & 0x7f) == 0x7f || (x & 0x7f) == 0) x = 0x38;  // no NaN, no zero
    b = x;
  }
  return v;
}

// FLOP/s of cuBLAS BF16 (fp32 accumulation) at 8192³.
inline double bf16_gemm_peak(const cuda::GpuContext& ctx, KernelTimer& tm) {
  const int64_t n = 8192;
  const auto host = random_bf16(size_t(n * n), 1);
  auto a = cuda::DeviceBuffer<__nv_bfloat16>::from_host(host), b = cuda::DeviceBuffer<__nv_bfloat16>::from_host(host);
  cuda::DeviceBuffer<__nv_bfloat16> c(size_t(n * n));
  const double s = tm.seconds(ctx, [&](int) { cuda::bf16_linear(ctx, a.get(), b.get(), c.get(), n, n, n); }, 20, 7);
  return 2.0 * n * n * n / s;
}

// FLOP/s of cuBLASLt FP8 (e4m3 x e4m3, bf16 out, per-tensor scales) at 8192³.
inline double fp8_gemm_peak(const cuda::GpuContext& ctx, KernelTimer& tm) {
  const int64_t n = 8192;
  const auto host = random_fp8(size_t(n * n), 3);
  auto a = cuda::DeviceBuffer<uint8_t>::from_host(host), b = cuda::DeviceBuffer<uint8_t>::from_host(host);
  cuda::DeviceBuffer<__nv_bfloat16> c(size_t(n * n));
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t la, lb, lc;
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, n, n, n));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, n, n, n));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, n, n));
  cublasLtMatmulPreference_t pref;
  DSQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = ctx.workspace_bytes();
  DSQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  DSQ_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.blas_lt(), op, la, lb, lc, lc, pref, 1, &res, &found));
  DSQ_CHECK(found > 0, "bench: cuBLASLt has no FP8 algorithm for 8192^3");
  const float alpha = 1.0f, beta = 0.0f;
  const double s = tm.seconds(ctx, [&](int) {
    DSQ_CUBLAS_CHECK(cublasLtMatmul(ctx.blas_lt(), op, &alpha, a.get(), la, b.get(), lb, &beta, c.get(), lc, c.get(),
                                    lc, &res.algo, ctx.workspace(), ws, ctx.stream()));
  }, 10);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  return 2.0 * n * n * n / s;
}

}  // namespace dsq::bench
