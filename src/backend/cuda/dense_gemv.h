// Dense small-batch linear on the GPU: y[n, N] = x[n, K] · W[N, K]ᵀ for a bf16 or fp32
// weight, fp32 activations used as they are (no rounding to bf16), fp32 accumulation and
// output, for n <= kGemvMaxRows rows. Decode runs every dense weight this way (shared
// expert, compressors, router, mHC projections, head): at a handful of rows a linear is a
// pass over the weight, and cuBLAS's GEMM kernels reached 10–20% of memory bandwidth on
// such shapes in the whole-model profile (dsq_model_bench, H100).
//
// One launch covers `groups` independent weights of the same shape stacked in memory
// (attn.wo_a's groups): group g multiplies x[:, g·x_group_stride ...] by rows
// [g·N, (g+1)·N) and writes y[:, g·N ...]. dense_gemv_many runs several separate weights
// that share one input (the projections a layer takes from the same activations).
#pragma once

#include <cstdint>

#include "backend/cuda/gpu_context.h"

namespace dsq::cuda {

constexpr int64_t kGemvMaxRows = 16;  // in passes of at most 8
constexpr int kGemvMaxTargets = 8;

// Whether dense_gemv takes these operands: n <= kGemvMaxRows, K a multiple of 8, row
// strides multiples of 4 floats, and 16-byte aligned pointers.
bool dense_gemv_fits(const void* w, const float* x, int64_t x_ld, const float* y, int64_t y_ld, int64_t n,
                     int64_t K);

// w: device [groups·N, K], bf16 bits when w_bf16, else fp32. x rows x_ld apart, y rows
// y_ld apart (floats). Group g reads x + g·x_group_stride and writes y + g·N.
void dense_gemv(const GpuContext& ctx, const void* w, bool w_bf16, int64_t N, int64_t K, int64_t groups,
                const float* x, int64_t x_ld, int64_t x_group_stride, int64_t n, float* y, int64_t y_ld);

// One weight of dense_gemv_many: w [rows, K] (device; bf16 or fp32 as the call says),
// y [n, rows] dense fp32.
struct GemvTarget {
  const void* w;
  float* y;
  int64_t rows;
};

// Up to kGemvMaxTargets weights of the same width and dtype on the same input, in one
// launch: y_i = x · W_iᵀ. Each target must pass dense_gemv_fits.
void dense_gemv_many(const GpuContext& ctx, const GemvTarget* targets, int count, bool w_bf16, int64_t K,
                     const float* x, int64_t x_ld, int64_t n);

}  // namespace dsq::cuda
