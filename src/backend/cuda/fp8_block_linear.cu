// FP8 block-scaled linear: activation quantization, the cuBLASLt block-scaled GEMM and a
// CUDA-core fallback kernel (see fp8_block_linear.h).
#include "backend/cuda/fp8_block_linear.h"

#include <cuda_fp8.h>

namespace dsq::cuda {

namespace {

constexpr int kBlock = 128;
constexpr float kE4m3Max = 448.0f;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One warp per (row, 128-wide K block): 4 elements per lane, amax by warp shuffle.
__global__ void quantize_act_kernel(const __nv_bfloat16* __restrict__ x, int M, int K,
                                    uint8_t* __restrict__ xq, float* __restrict__ scales,
                                    bool outer_major) {
  const int warp = int((blockIdx.x * blockDim.x + threadIdx.x) / 32);
  const int lane = threadIdx.x % 32;
  const int kb_count = K / kBlock;
  if (warp >= M * kb_count) return;
  const int row = warp / kb_count, kb = warp % kb_count;
  const size_t base = size_t(row) * K + size_t(kb) * kBlock + lane * 4;
  const uint2 raw = *reinterpret_cast<const uint2*>(x + base);
  const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  const float v[4] = {__low2float(lo), __high2float(lo), __low2float(hi), __high2float(hi)};
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  // An all-zero block gets scale 1 (its codes are all zero either way).
  const float scale = amax > 0.0f ? amax / kE4m3Max : 1.0f;
  const float inv = 1.0f / scale;
  uint32_t packed = 0;
  for (int i = 0; i < 4; ++i) {
    const __nv_fp8_storage_t q = __nv_cvt_float_to_fp8(v[i] * inv, __NV_SATFINITE, __NV_E4M3);
    packed |= uint32_t(q) << (8 * i);
  }
  *reinterpret_cast<uint32_t*>(xq + base) = packed;
  if (lane == 0) scales[outer_major ? size_t(kb) * M + row : size_t(row) * kb_count + kb] = scale;
}

__device__ float e4m3_to_float(uint8_t v) {
  return float(*reinterpret_cast<const __nv_fp8_e4m3*>(&v));
}

// Fallback GEMM: a 16×16 thread block computes a 64×64 tile of y, each thread 4×4
// outputs, with operands dequantized to fp32 in shared memory one 32-wide K slab at a
// time. Correct for any shape; only meant for shapes cuBLASLt refuses.
constexpr int kFbTile = 64, kFbSlab = 32;
__global__ void fp8_block_fallback_kernel(const uint8_t* __restrict__ xq,
                                          const float* __restrict__ xs, bool xs_outer,
                                          const uint8_t* __restrict__ w,
                                          const float* __restrict__ ws,  // k-major blocks
                                          __nv_bfloat16* __restrict__ y, int M, int N, int K) {
  __shared__ float xt[kFbTile][kFbSlab + 1];
  __shared__ float wt[kFbTile][kFbSlab + 1];
  const int m0 = blockIdx.y * kFbTile, n0 = blockIdx.x * kFbTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int kbs = K / kBlock;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kFbSlab) {
    const int kb = k0 / kBlock;
    for (int i = threadIdx.x; i < kFbTile * kFbSlab; i += blockDim.x) {
      const int r = i / kFbSlab, c = i % kFbSlab;
      const int m = m0 + r, n = n0 + r;
      float xv = 0.0f, wv = 0.0f;
      if (m < M) {
        const float s = xs[xs_outer ? size_t(kb) * M + m : size_t(m) * kbs + kb];
        xv = e4m3_to_float(xq[size_t(m) * K + k0 + c]) * s;
      }
      if (n < N) wv = e4m3_to_float(w[size_t(n) * K + k0 + c]) * ws[size_t(n / kBlock) * kbs + kb];
      xt[r][c] = xv;
      wt[r][c] = wv;
    }
    __syncthreads();
    for (int c = 0; c < kFbSlab; ++c)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] += xt[ty * 4 + i][c] * wt[tx * 4 + j][c];
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < M && n < N) y[size_t(m) * N + n] = __float2bfloat16(acc[i][j]);
    }
}

struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  ~LtDescriptors() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Column-major view: A = W as [K,N] transposed, B = xq as [K,M], D = y as [N,M].
void make_descriptors(LtDescriptors& d, int64_t M, int64_t N, int64_t K, const float* w_scales,
                      const float* x_scales) {
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scales, sizeof(w_scales)));
  DSQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scales, sizeof(x_scales)));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_8F_E4M3, K, N, K));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_8F_E4M3, K, M, K));
  DSQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.d, CUDA_R_16BF, N, M, N));
}

}  // namespace

void quantize_act_fp8_1x128(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, int64_t K,
                            uint8_t* xq, float* x_scales, ScaleOrder order) {
  DSQ_CHECK(K % kBlock == 0, "quantize_act_fp8_1x128: K=", K, " is not a multiple of 128");
  const int64_t warps = M * (K / kBlock);
  if (warps == 0) return;
  const int threads = 256;
  quantize_act_kernel<<<unsigned(ceil_div(warps * 32, threads)), threads, 0, ctx.stream()>>>(
      x, int(M), int(K), xq, x_scales, order == ScaleOrder::OuterMajor);
  DSQ_CUDA_CHECK_LAUNCH();
}

Fp8BlockLinear::Fp8BlockLinear(const uint8_t* values, const float* scales, int64_t N, int64_t K,
                               const std::string& what)
    : N_(N), K_(K), what_(what) {
  DSQ_CHECK(N > 0 && K > 0, what, ": empty FP8 weight [", N, ", ", K, "]");
  DSQ_CHECK(K % kBlock == 0, what, ": FP8 block linear needs in-features divisible by 128, got ", K);
  DSQ_CHECK(N % 8 == 0, what, ": FP8 block linear needs out-features divisible by 8, got ", N);
  values_ = DeviceBuffer<uint8_t>::from_host(values, size_t(N * K));
  host_scales_.assign(scales, scales + ceil_div(N, kBlock) * (K / kBlock));
  upload_weight_scales();
}

void Fp8BlockLinear::upload_weight_scales() {
  const int64_t nb = ceil_div(N_, kBlock), kb = K_ / kBlock;
  std::vector<float> laid(host_scales_.size());
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = 0; j < kb; ++j)
      laid[weight_order_ == ScaleOrder::KMajor ? i * kb + j : j * nb + i] = host_scales_[i * kb + j];
  scales_ = DeviceBuffer<float>::from_host(laid);
}

void Fp8BlockLinear::set_scale_orders(ScaleOrder act, ScaleOrder weight) {
  act_order_ = act;
  weight_order_ = weight;
  upload_weight_scales();
  plans_.clear();
}

size_t Fp8BlockLinear::workspace_bytes(int64_t M, int64_t K) {
  // e4m3 codes, then the scales at a 256-byte aligned offset.
  const size_t codes = (size_t(M * K) + 255) / 256 * 256;
  return codes + size_t(M * (K / kBlock)) * sizeof(float);
}

void Fp8BlockLinear::run(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M,
                         __nv_bfloat16* y, void* workspace) {
  auto* xq = static_cast<uint8_t*>(workspace);
  auto* xs = reinterpret_cast<float*>(xq + (size_t(M * K_) + 255) / 256 * 256);
  quantize_act_fp8_1x128(ctx, x, M, K_, xq, xs, act_order_);
  run_quantized(ctx, xq, xs, M, y);
}

bool Fp8BlockLinear::run_cublaslt(const GpuContext& ctx, const uint8_t* xq, const float* x_scales,
                                  int64_t M, __nv_bfloat16* y) {
  LtDescriptors d;
  make_descriptors(d, M, N_, K_, scales_.get(), x_scales);
  auto it = plans_.find(M);
  if (it == plans_.end()) {
    Plan plan;
    cublasLtMatmulPreference_t pref = nullptr;
    DSQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = ctx.workspace_bytes();
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.blas_lt(), d.op, d.a, d.b, d.d, d.d,
                                                             pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
      plan.ok = true;
      plan.algo = result.algo;
    }
    it = plans_.emplace(M, plan).first;
  }
  if (!it->second.ok) return false;
  const float alpha = 1.0f, beta = 0.0f;
  DSQ_CUBLAS_CHECK(cublasLtMatmul(ctx.blas_lt(), d.op, &alpha, values_.get(), d.a, xq, d.b, &beta, y,
                                  d.d, y, d.d, &it->second.algo, ctx.workspace(),
                                  ctx.workspace_bytes(), ctx.stream()));
  return true;
}

void Fp8BlockLinear::run_quantized(const GpuContext& ctx, const uint8_t* xq, const float* x_scales,
                                   int64_t M, __nv_bfloat16* y) {
  DSQ_CHECK(M > 0, what_, ": FP8 linear called with ", M, " rows");
  last_used_lt_ = !force_fallback_ && run_cublaslt(ctx, xq, x_scales, M, y);
  if (last_used_lt_) return;
  DSQ_CHECK(weight_order_ == ScaleOrder::KMajor, what_, ": fallback kernel needs k-major weight scales");
  const dim3 grid(unsigned(ceil_div(N_, kFbTile)), unsigned(ceil_div(M, kFbTile)));
  fp8_block_fallback_kernel<<<grid, 256, 0, ctx.stream()>>>(
      xq, x_scales, act_order_ == ScaleOrder::OuterMajor, values_.get(), scales_.get(), y, int(M),
      int(N_), int(K_));
  DSQ_CUDA_CHECK_LAUNCH();
}

}  // namespace dsq::cuda
