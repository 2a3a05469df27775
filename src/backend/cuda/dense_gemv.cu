// Dense small-batch linear (dense_gemv.h). A block owns 4 output rows of one group (8
// from 4 activation rows on, so that the activations, which every block reads from L2,
// stay small next to the weights); its 8 warps split K, each lane streaming 16 bytes of
// every row per step with the matching activations of all n rows kept in registers, so
// each weight byte is read once and each activation value once per block. Partial sums
// meet in shared memory. More than 8 activation rows run as passes of at most 8.
// Kernels are programmatic dependents (dependent_launch.h): each block prefetches its
// weight rows into L2 before waiting for the kernel before it (in linear_many, the FP8
// projections of the same input), then reads the activations.
#include "backend/cuda/dense_gemv.h"

#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/dependent_launch.h"

namespace dsq::cuda {

namespace {

constexpr int kWarps = 8, kPassRows = 8;

// Output rows per block for M activation rows.
constexpr int rows_per_block(int M) { return M >= 4 ? 8 : 4; }

// 8 weights of row r at k (bf16: one 16-byte load; fp32: two).
__device__ __forceinline__ void load8(const __nv_bfloat16* w, float (&out)[8]) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(w));
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float* w, float (&out)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(w)), b = __ldg(reinterpret_cast<const float4*>(w) + 1);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// Rows [row0, row0 + kRows) of y[n, N] = x[n, K] · W[N, K]ᵀ, by one block.
template <typename W, int M>
__device__ __forceinline__ void gemv_rows(const W* __restrict__ w, int N, int K, const float* __restrict__ x,
                                          int64_t x_ld, int n, float* __restrict__ y, int64_t y_ld, int row0) {
  constexpr int kRows = rows_per_block(M);
  __shared__ float partial[kWarps][M][kRows];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  allow_dependent_launch();
  {  // The block's rows are contiguous: one 128-byte line per thread and round.
    const char* first = reinterpret_cast<const char*>(w + int64_t(row0) * K);
    const int64_t bytes = int64_t(min(kRows, N - row0)) * K * int64_t(sizeof(W));
    for (int64_t off = int64_t(threadIdx.x) * 128; off < bytes; off += int64_t(blockDim.x) * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(first + off));
  }
  wait_for_previous_kernel();
  float acc[M][kRows] = {};
  // Warp `warp` takes every kWarps-th 256-wide step of K (8 values per lane).
  for (int k = (warp * 32 + lane) * 8; k < K; k += kWarps * 32 * 8) {
    float xv[M][8];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (m < n) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(x + m * x_ld + k));
        const float4 b = __ldg(reinterpret_cast<const float4*>(x + m * x_ld + k) + 1);
        xv[m][0] = a.x, xv[m][1] = a.y, xv[m][2] = a.z, xv[m][3] = a.w;
        xv[m][4] = b.x, xv[m][5] = b.y, xv[m][6] = b.z, xv[m][7] = b.w;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) xv[m][i] = 0.0f;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (row0 + r >= N) break;
      float wv[8];
      load8(w + int64_t(row0 + r) * K + k, wv);
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[m][r] = fmaf(wv[i], xv[m][i], acc[m][r]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) partial[warp][m][r] = v;
    }
  __syncthreads();
  if (threadIdx.x < M * kRows) {
    const int m = threadIdx.x / kRows, r = threadIdx.x % kRows;
    if (m < n && row0 + r < N) {
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) sum += partial[i][m][r];
      y[m * y_ld + row0 + r] = sum;
    }
  }
}

// Group blockIdx.y of a stacked weight (dense_gemv).
template <typename W, int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const W* __restrict__ w, int N, int K,
                                                           const float* __restrict__ x, int64_t x_ld,
                                                           int64_t x_group_stride, int n, float* __restrict__ y,
                                                           int64_t y_ld) {
  const int g = blockIdx.y;
  gemv_rows<W, M>(w + (int64_t(g) * N) * K, N, K, x + g * x_group_stride, x_ld, n, y + int64_t(g) * N, y_ld,
                  blockIdx.x * rows_per_block(M));
}

// Several weights on one input (dense_gemv_many): block b serves the target whose block
// range holds it. Passed by value (a few hundred bytes).
struct ManyTargets {
  const void* w[kGemvMaxTargets];
  float* y[kGemvMaxTargets];
  int rows[kGemvMaxTargets];
  int first_block[kGemvMaxTargets + 1];
  int count;
};

template <typename W, int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_many_kernel(ManyTargets t, int K, const float* __restrict__ x,
                                                                int64_t x_ld, int n) {
  int i = 0;
  while (i + 1 < t.count && int(blockIdx.x) >= t.first_block[i + 1]) ++i;
  const int row0 = (int(blockIdx.x) - t.first_block[i]) * rows_per_block(M);
  gemv_rows<W, M>(static_cast<const W*>(t.w[i]), t.rows[i], K, x, x_ld, n, t.y[i], t.rows[i], row0);
}

// The kernel's activation-row capacity M for n <= kPassRows rows.
constexpr int capacity(int64_t n) { return n == 1 ? 1 : n == 2 ? 2 : n <= 4 ? 4 : 8; }

template <typename W, int M>
struct GemvKernel {
  static constexpr auto fn = gemv_kernel<W, M>;
};
template <typename W, int M>
struct GemvManyKernel {
  static constexpr auto fn = gemv_many_kernel<W, M>;
};

// Kernel<W, capacity(n)>::fn(args...) on blocks × groups blocks.
template <template <typename, int> class Kernel, typename W, typename... Args>
void launch_rows(const GpuContext& ctx, int64_t n, unsigned blocks, unsigned groups, Args... args) {
  const dim3 grid(blocks, groups), block(kWarps * 32);
  switch (capacity(n)) {
    case 1: launch_dependent(ctx, Kernel<W, 1>::fn, grid, block, 0, args...); break;
    case 2: launch_dependent(ctx, Kernel<W, 2>::fn, grid, block, 0, args...); break;
    case 4: launch_dependent(ctx, Kernel<W, 4>::fn, grid, block, 0, args...); break;
    default: launch_dependent(ctx, Kernel<W, 8>::fn, grid, block, 0, args...); break;
  }
}

template <typename W>
void launch(const GpuContext& ctx, const W* w, int64_t N, int64_t K, int64_t groups, const float* x, int64_t x_ld,
            int64_t x_group_stride, int64_t n, float* y, int64_t y_ld) {
  for (int64_t m0 = 0; m0 < n; m0 += kPassRows) {
    const int64_t rows = std::min<int64_t>(kPassRows, n - m0), per_block = rows_per_block(capacity(rows));
    launch_rows<GemvKernel, W>(ctx, rows, unsigned((N + per_block - 1) / per_block), unsigned(groups), w, int(N),
                               int(K), x + m0 * x_ld, x_ld, x_group_stride, int(rows), y + m0 * y_ld, y_ld);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename W>
void launch_many(const GpuContext& ctx, const ManyTargets& all, int64_t K, const float* x, int64_t x_ld, int64_t n) {
  for (int64_t m0 = 0; m0 < n; m0 += kPassRows) {
    const int64_t rows = std::min<int64_t>(kPassRows, n - m0);
    const int per_block = rows_per_block(capacity(rows));
    ManyTargets t = all;
    for (int i = 0; i < t.count; ++i) {
      t.y[i] = all.y[i] + m0 * t.rows[i];
      t.first_block[i + 1] = t.first_block[i] + (t.rows[i] + per_block - 1) / per_block;
    }
    launch_rows<GemvManyKernel, W>(ctx, rows, unsigned(t.first_block[t.count]), 1u, t, int(K), x + m0 * x_ld, x_ld,
                                   int(rows));
  }
}

}  // namespace

void dense_gemv_many(const GpuContext& ctx, const GemvTarget* targets, int count, bool w_bf16, int64_t K,
                     const float* x, int64_t x_ld, int64_t n) {
  DSQ_CHECK(count >= 1 && count <= kGemvMaxTargets, "dense_gemv_many: ", count, " targets (1 to ",
            kGemvMaxTargets, ")");
  ManyTargets t{};
  t.count = count;
  int64_t total_rows = 0;
  for (int i = 0; i < count; ++i) {
    DSQ_CHECK(dense_gemv_fits(targets[i].w, x, x_ld, targets[i].y, targets[i].rows, n, K),
              "dense_gemv_many: operands it does not take (n=", n, ", K=", K, ")");
    t.w[i] = targets[i].w;
    t.y[i] = targets[i].y;
    t.rows[i] = int(targets[i].rows);
    total_rows += targets[i].rows;
  }
  if (total_rows == 0) return;
  if (w_bf16) launch_many<__nv_bfloat16>(ctx, t, K, x, x_ld, n);
  else launch_many<float>(ctx, t, K, x, x_ld, n);
}

bool dense_gemv_fits(const void* w, const float* x, int64_t x_ld, const float* y, int64_t y_ld, int64_t n,
                     int64_t K) {
  (void)y_ld;
  return n >= 1 && n <= kGemvMaxRows && K % 8 == 0 && x_ld % 4 == 0 && aligned16(w) && aligned16(x) && y != nullptr;
}

void dense_gemv(const GpuContext& ctx, const void* w, bool w_bf16, int64_t N, int64_t K, int64_t groups,
                const float* x, int64_t x_ld, int64_t x_group_stride, int64_t n, float* y, int64_t y_ld) {
  DSQ_CHECK(dense_gemv_fits(w, x, x_ld, y, y_ld, n, K) && x_group_stride % 4 == 0,
            "dense_gemv: operands it does not take (n=", n, ", K=", K, ", x_ld=", x_ld, ")");
  if (N == 0 || groups == 0) return;
  if (w_bf16)
    launch(ctx, static_cast<const __nv_bfloat16*>(w), N, K, groups, x, x_ld, x_group_stride, n, y, y_ld);
  else
    launch(ctx, static_cast<const float*>(w), N, K, groups, x, x_ld, x_group_stride, n, y, y_ld);
}

}  // namespace dsq::cuda
