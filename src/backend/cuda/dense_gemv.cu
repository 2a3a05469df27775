// Dense small-batch linear (dense_gemv.h). A block owns kRows output rows of one group;
// its 8 warps split K, each lane streaming 16 bytes of every row per step with the
// matching activations of all n rows kept in registers, so each weight byte is read once
// and each activation value once per block. Partial sums meet in shared memory.
#include "backend/cuda/dense_gemv.h"

#include <cuda_bf16.h>

namespace dsq::cuda {

namespace {

constexpr int kWarps = 8, kRows = 4;

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
  __shared__ float partial[kWarps][M][kRows];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
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
                  blockIdx.x * kRows);
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
  const int row0 = (int(blockIdx.x) - t.first_block[i]) * kRows;
  gemv_rows<W, M>(static_cast<const W*>(t.w[i]), t.rows[i], K, x, x_ld, n, t.y[i], t.rows[i], row0);
}

template <typename W>
void launch(const GpuContext& ctx, const W* w, int64_t N, int64_t K, int64_t groups, const float* x, int64_t x_ld,
            int64_t x_group_stride, int64_t n, float* y, int64_t y_ld) {
  const dim3 grid(unsigned((N + kRows - 1) / kRows), unsigned(groups)), block(kWarps * 32);
  const auto run = [&](auto kernel) {
    kernel<<<grid, block, 0, ctx.stream()>>>(w, int(N), int(K), x, x_ld, x_group_stride, int(n), y, y_ld);
  };
  if (n == 1) run(gemv_kernel<W, 1>);
  else if (n == 2) run(gemv_kernel<W, 2>);
  else if (n <= 4) run(gemv_kernel<W, 4>);
  else run(gemv_kernel<W, 8>);
  DSQ_CUDA_CHECK_LAUNCH();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename W>
void launch_many(const GpuContext& ctx, const ManyTargets& t, int64_t K, const float* x, int64_t x_ld, int64_t n) {
  const dim3 grid(unsigned(t.first_block[t.count])), block(kWarps * 32);
  const auto run = [&](auto kernel) { kernel<<<grid, block, 0, ctx.stream()>>>(t, int(K), x, x_ld, int(n)); };
  if (n == 1) run(gemv_many_kernel<W, 1>);
  else if (n == 2) run(gemv_many_kernel<W, 2>);
  else if (n <= 4) run(gemv_many_kernel<W, 4>);
  else run(gemv_many_kernel<W, 8>);
  DSQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void dense_gemv_many(const GpuContext& ctx, const GemvTarget* targets, int count, bool w_bf16, int64_t K,
                     const float* x, int64_t x_ld, int64_t n) {
  DSQ_CHECK(count >= 1 && count <= kGemvMaxTargets, "dense_gemv_many: ", count, " targets (1 to ",
            kGemvMaxTargets, ")");
  ManyTargets t{};
  t.count = count;
  for (int i = 0; i < count; ++i) {
    DSQ_CHECK(dense_gemv_fits(targets[i].w, x, x_ld, targets[i].y, targets[i].rows, n, K),
              "dense_gemv_many: operands it does not take (n=", n, ", K=", K, ")");
    t.w[i] = targets[i].w;
    t.y[i] = targets[i].y;
    t.rows[i] = int(targets[i].rows);
    t.first_block[i + 1] = t.first_block[i] + int((targets[i].rows + kRows - 1) / kRows);
  }
  if (t.first_block[count] == 0) return;
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
