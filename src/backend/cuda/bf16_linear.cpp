// BF16 linear through cublasGemmEx (see bf16_linear.h).
//
// cuBLAS is column-major. A row-major y[M,N] is a column-major [N,M] matrix, so we ask
// for y^T = W · x^T: W (row-major [N,K] = column-major [K,N]) transposed, x (row-major
// [M,K] = column-major [K,M]) as is — the "TN" layout cuBLAS serves best.
#include "backend/cuda/bf16_linear.h"

namespace dsq::cuda {

namespace {

void gemm_tn(const GpuContext& ctx, const __nv_bfloat16* x, const __nv_bfloat16* w, void* y,
             cudaDataType_t y_type, int64_t M, int64_t N, int64_t K) {
  DSQ_CHECK(M > 0 && N > 0 && K > 0, "bf16_linear: empty shape M=", M, " N=", N, " K=", K);
  DSQ_CHECK(N % 8 == 0 && K % 8 == 0, "bf16_linear: N=", N, " and K=", K, " must be multiples of 8");
  const float alpha = 1.0f, beta = 0.0f;
  DSQ_CUBLAS_CHECK(cublasGemmEx(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha,
                                w, CUDA_R_16BF, int(K), x, CUDA_R_16BF, int(K), &beta, y, y_type,
                                int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void bf16_linear(const GpuContext& ctx, const __nv_bfloat16* x, const __nv_bfloat16* w,
                 __nv_bfloat16* y, int64_t M, int64_t N, int64_t K) {
  gemm_tn(ctx, x, w, y, CUDA_R_16BF, M, N, K);
}

void bf16_linear_f32_out(const GpuContext& ctx, const __nv_bfloat16* x, const __nv_bfloat16* w,
                         float* y, int64_t M, int64_t N, int64_t K) {
  gemm_tn(ctx, x, w, y, CUDA_R_32F, M, N, K);
}

}  // namespace dsq::cuda
