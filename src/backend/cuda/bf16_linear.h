// Dense BF16 linear layer on the GPU through cuBLAS: y[M,N] = x[M,K] · W[N,K]^T with bf16
// inputs, fp32 accumulation and a bf16 (or fp32) output. Used for the shared expert, the
// compressors, the router gate and lm_head (all stored BF16 in dsq checkpoints).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

// All pointers are device pointers, row-major and densely packed. K and N must be
// multiples of 8 (16-byte rows, which the tensor-core paths of cuBLAS need).
void bf16_linear(const GpuContext& ctx, const __nv_bfloat16* x, const __nv_bfloat16* w,
                 __nv_bfloat16* y, int64_t M, int64_t N, int64_t K);
void bf16_linear_f32_out(const GpuContext& ctx, const __nv_bfloat16* x, const __nv_bfloat16* w,
                         float* y, int64_t M, int64_t N, int64_t K);

}  // namespace dsq::cuda
