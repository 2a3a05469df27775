// FP8 block-scaled linear: activation quantization, the cuBLASLt block-scaled GEMM and a
// CUDA-core fallback kernel (see fp8_block_linear.h).
#include "backend/cuda/fp8_block_linear.h"

#include <cuda_fp8.h>

#include <algorithm>

#include "backend/cuda/dependent_launch.h"

namespace dsq::cuda {

namespace {

constexpr int kBlock = 128;
constexpr float kE4m3Max = 448.0f;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One warp per (row, 128-wide K block): 4 elements per lane, amax by warp shuffle.
__global__ void quantize_act_kernel(const __nv_bfloat16* __restrict__ x, int M, int K,
                                    uint8_t* __restrict__ xq, float* __restrict__ scales,
                                    bool outer_major, int scale_rows) {
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
  if (lane == 0) scales[outer_major ? size_t(kb) * scale_rows + row : size_t(row) * kb_count + kb] = scale;
}

__device__ float e4m3_to_float(uint8_t v) {
  return float(*reinterpret_cast<const __nv_fp8_e4m3*>(&v));
}

// Decode GEMM: y[M, N] = quant(x) · W^T for M <= 64, in one launch.
//
// Grid: (N/128 column blocks) × (K/(256·R) slices). Each block quantizes its own slice
// of x (1×128 blocks, exactly as quantize_act_kernel does; x is small and stays in L2)
// and multiplies it with 128 rows of W (one 16-row tile per warp), R steps of 256 inputs
// with the next step's weights loading during the current one. A single slice stores y
// directly; otherwise the blocks add their fp32 partial sums into the workspace
// accumulator, and the last block to finish a column block (counted with an atomic
// ticket) converts those columns to bf16 and zeroes the accumulator and its ticket
// again, so no separate memset or conversion launch is needed.
// It is launched as a programmatic dependent (dependent_launch.h): its weight loads are
// issued before it waits for the previous kernel, which may have written x, and before
// it touches the workspace that the previous run may still be finalizing.
//
// Swapped operands: W is the mma's A, the tokens are its B (8 per tile). For m16n8k32
// each lane must hold A bytes k = 4t..4t+3 and 16+4t..16+4t+3 of rows g and g+8; we
// instead load 16 contiguous bytes k = 16t..16t+15 of a 64-wide block per row and read
// them as two k32 steps, step s taking bytes 16t+8s..+3 as the "4t" part and
// 16t+8s+4..+7 as the "16+4t" part. B is read with the same permutation, so the dot
// products are unchanged, and W needs no re-layout.
constexpr int kDecStep = 256;                  // K per step
constexpr int kDecWarps = 8;                   // 16 rows of N each
constexpr int kDecCols = kDecWarps * 16;       // N per block

__device__ __forceinline__ void mma_e4m3_16832(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                               uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 4 blocks of 64 inputs × rows {g, g+8} of one step: 8 independent 16-byte loads per lane.
__device__ __forceinline__ void load_step(uint4 (&wv)[4][2], const uint8_t* r0, int K) {
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    wv[b][0] = __ldcs(reinterpret_cast<const uint4*>(r0 + 64 * b));
    wv[b][1] = __ldcs(reinterpret_cast<const uint4*>(r0 + size_t(8) * K + 64 * b));
  }
}

// Four consecutive activations as fp32, from bf16 (8 bytes) or fp32 (16 bytes).
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float (&v)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  v[0] = __low2float(lo), v[1] = __high2float(lo), v[2] = __low2float(hi), v[3] = __high2float(hi);
}
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
}
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

// X, Y: the activation and output types (bf16, or fp32 for CudaOps' fp32 activations,
// which saves it a conversion launch on each side).
template <int MT, int R, typename X, typename Y>
__global__ void __launch_bounds__(kDecWarps * 32)
    fp8_decode_kernel(const uint8_t* __restrict__ w, const float* __restrict__ w_scales, const X* __restrict__ x,
                      float* __restrict__ acc, unsigned* __restrict__ tickets, Y* __restrict__ y, int M, int N,
                      int K) {
  constexpr int kSlice = R * kDecStep;
  constexpr int kRowStride = kSlice + 64;  // bytes; conflict-free 16-byte reads
  __shared__ __align__(16) uint8_t xs[MT * 8 * kRowStride];
  __shared__ float x_scale[MT * 8][2 * R];
  __shared__ bool last_block;
  const int k0 = blockIdx.y * kSlice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kDecCols + warp * 16;
  const bool active = n0 < N;
  const uint8_t* wrow = w + size_t(n0 + g) * K + k0 + 16 * t;
  allow_dependent_launch();

  uint4 wv[R > 1 ? 2 : 1][4][2];
  if (active) load_step(wv[0], wrow, K);
  wait_for_previous_kernel();  // x is written, the workspace is clean
  // Quantize the x slice: one warp per (row, 128-block), 4 values per lane.
  for (int p = warp; p < MT * 8 * 2 * R; p += kDecWarps) {
    const int r = p / (2 * R), h = p % (2 * R);
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (r < M) load4(x + size_t(r) * K + k0 + h * kBlock + lane * 4, v);
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float scale = amax > 0.0f ? amax / kE4m3Max : 1.0f;
    const float inv = 1.0f / scale;
    uint32_t packed = 0;
    for (int i = 0; i < 4; ++i)
      packed |= uint32_t(__nv_cvt_float_to_fp8(v[i] * inv, __NV_SATFINITE, __NV_E4M3)) << (8 * i);
    *reinterpret_cast<uint32_t*>(xs + r * kRowStride + h * kBlock + lane * 4) = packed;
    if (lane == 0) x_scale[r][h] = r < M ? scale : 0.0f;  // rows past M contribute nothing
  }
  __syncthreads();

  if (active) {
    float sum[MT][4] = {};
#pragma unroll
    for (int step = 0; step < R; ++step) {
      if (step + 1 < R) load_step(wv[(step + 1) % 2], wrow + (step + 1) * kDecStep, K);
      const uint4 (&cur)[4][2] = wv[step % 2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // the two 128-wide scale blocks of the step
        float part[MT][4] = {};
#pragma unroll
        for (int b = 2 * half; b < 2 * half + 2; ++b) {
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            const uint4 xv =
                *reinterpret_cast<const uint4*>(xs + (m * 8 + g) * kRowStride + step * kDecStep + 64 * b + 16 * t);
            mma_e4m3_16832(part[m], cur[b][0].x, cur[b][1].x, cur[b][0].y, cur[b][1].y, xv.x, xv.y);
            mma_e4m3_16832(part[m], cur[b][0].z, cur[b][1].z, cur[b][0].w, cur[b][1].w, xv.z, xv.w);
          }
        }
        const int h = 2 * step + half;
        const float ws = __ldg(w_scales + size_t(n0 / kBlock) * (K / kBlock) + k0 / kBlock + h);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float s0 = ws * x_scale[m * 8 + 2 * t][h];
          const float s1 = ws * x_scale[m * 8 + 2 * t + 1][h];
          sum[m][0] += part[m][0] * s0;
          sum[m][1] += part[m][1] * s1;
          sum[m][2] += part[m][2] * s0;
          sum[m][3] += part[m][3] * s1;
        }
      }
    }
    // C fragment: (row g, tokens 2t, 2t+1) and (row g+8, same tokens).
    const bool single_slice = gridDim.y == 1;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const int tok = m * 8 + 2 * t;
      for (int j = 0; j < 2; ++j) {
        if (tok + j >= M) continue;
        const size_t at = size_t(tok + j) * N + n0 + g;
        if (single_slice) {
          store(y + at, sum[m][j]);
          store(y + at + 8, sum[m][j + 2]);
        } else {
          atomicAdd(acc + at, sum[m][j]);
          atomicAdd(acc + at + 8, sum[m][j + 2]);
        }
      }
    }
  }
  if (gridDim.y == 1) return;
  // Ticket: the block that completes a column block finalizes it.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_block = atomicAdd(&tickets[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  const int c0 = blockIdx.x * kDecCols;
  for (int i = threadIdx.x; i < M * kDecCols; i += blockDim.x) {
    const int r = i / kDecCols, c = c0 + i % kDecCols;
    if (c >= N) continue;
    float* a = acc + size_t(r) * N + c;
    store(y + size_t(r) * N + c, __ldcg(a));
    *a = 0.0f;
  }
  if (threadIdx.x == 0) tickets[blockIdx.x] = 0;
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
                            uint8_t* xq, float* x_scales, ScaleOrder order, int64_t scale_rows) {
  DSQ_CHECK(K % kBlock == 0, "quantize_act_fp8_1x128: K=", K, " is not a multiple of 128");
  DSQ_CHECK(scale_rows >= M, "quantize_act_fp8_1x128: scale_rows ", scale_rows, " < M ", M);
  const int64_t warps = M * (K / kBlock);
  if (warps == 0) return;
  const int threads = 256;
  quantize_act_kernel<<<unsigned(ceil_div(warps * 32, threads)), threads, 0, ctx.stream()>>>(
      x, int(M), int(K), xq, x_scales, order == ScaleOrder::OuterMajor, int(scale_rows));
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
  kmajor_scales_ = DeviceBuffer<float>::from_host(host_scales_);
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

// Scratch for one run with M rows (Mp = M rounded up to 16), each part 256-byte aligned:
//   decode: tickets [N/128] and an fp32 accumulator [64, N], both left zero by every run;
//   others: e4m3 codes [Mp, K], activation scales [Mp, K/128], a bf16 [Mp, N] padded output.
struct Fp8BlockLinear::Workspace {
  unsigned* tickets;
  float* acc;
  uint8_t* codes;
  float* scales;
  __nv_bfloat16* padded_out;
  size_t bytes;
};

Fp8BlockLinear::Workspace Fp8BlockLinear::carve(void* base, int64_t M) const {
  const auto align = [](size_t b) { return (b + 255) / 256 * 256; };
  const int64_t Mp = ceil_div(M, 16) * 16;
  auto* p = static_cast<uint8_t*>(base);
  size_t off = 0;
  const auto take = [&](size_t bytes) {
    uint8_t* at = p ? p + off : nullptr;
    off += align(bytes);
    return at;
  };
  Workspace w{};
  w.tickets = reinterpret_cast<unsigned*>(take(size_t(ceil_div(N_, kDecCols)) * sizeof(unsigned)));
  // Fixed size, so the zero region never moves with M (other paths write past it).
  w.acc = reinterpret_cast<float*>(take(size_t(kFp8DecodeMaxRows * N_) * sizeof(float)));
  w.codes = take(size_t(Mp * K_));
  w.scales = reinterpret_cast<float*>(take(size_t(Mp * (K_ / kBlock)) * sizeof(float)));
  w.padded_out = reinterpret_cast<__nv_bfloat16*>(take(size_t(Mp * N_) * sizeof(__nv_bfloat16)));
  w.bytes = off;
  return w;
}

size_t Fp8BlockLinear::workspace_bytes(int64_t M) const { return carve(nullptr, M).bytes; }

int Fp8BlockLinear::decode_steps(int sm_count) const {
  const int64_t slices = K_ / kDecStep;
  if (decode_steps_) {
    DSQ_CHECK(slices % decode_steps_ == 0, what_, ": ", decode_steps_, " decode steps do not divide K=", K_);
    return decode_steps_;
  }
  // Longer slices (fewer atomics, each block streams more) while two blocks per SM remain.
  const int64_t units = ceil_div(N_, kDecCols) * slices;
  for (int steps : {4, 2})
    if (slices % steps == 0 && units / steps >= 2 * int64_t(sm_count)) return steps;
  return 1;
}

bool Fp8BlockLinear::has_plan(const GpuContext& ctx, int64_t M) {
  auto it = plans_.find(M);
  if (it != plans_.end()) return it->second.ok;
  LtDescriptors d;
  // cuBLASLt offers no algorithm without a scale pointer: any device pointer stands in.
  make_descriptors(d, M, N_, K_, scales_.get(), kmajor_scales_.get());
  Plan plan;
  cublasLtMatmulPreference_t pref = nullptr;
  DSQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = ctx.workspace_bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.blas_lt(), d.op, d.a, d.b, d.d, d.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    plan.ok = true;
    plan.algo = result.algo;
  }
  plans_.emplace(M, plan);
  return plan.ok;
}

int64_t Fp8BlockLinear::cublaslt_rows(const GpuContext& ctx, int64_t M) {
  // On an H100 (cuBLAS 13.0) block-scaled FP8 with K = 256 and N = 256 returned garbage
  // (M = 37; [128, 256] was right), as K = 128 did: below K = 512 the fallback runs.
  if (K_ < 512) return 0;
  if (has_plan(ctx, M)) return M;
  const int64_t padded = ceil_div(M, 16) * 16;
  if (padded != M && has_plan(ctx, padded)) return padded;
  return 0;
}

void Fp8BlockLinear::run_cublaslt(const GpuContext& ctx, const uint8_t* xq, const float* x_scales,
                                  int64_t M, __nv_bfloat16* y) {
  LtDescriptors d;
  make_descriptors(d, M, N_, K_, scales_.get(), x_scales);
  const float alpha = 1.0f, beta = 0.0f;
  DSQ_CUBLAS_CHECK(cublasLtMatmul(ctx.blas_lt(), d.op, &alpha, values_.get(), d.a, xq, d.b, &beta, y,
                                  d.d, y, d.d, &plans_.at(M).algo, ctx.workspace(),
                                  ctx.workspace_bytes(), ctx.stream()));
}

template <typename X, typename Y>
void Fp8BlockLinear::launch_decode(const GpuContext& ctx, const X* x, int64_t M, Y* y, const Workspace& ws) {
  DSQ_CHECK(decode_fits(M), what_, ": FP8 decode kernel needs M <= 64, N % 16 == 0 and K % 256 == 0 (M=", M,
            ", N=", N_, ", K=", K_, ")");
  const int steps = M <= 8 ? decode_steps(ctx.sm_count()) : 1;
  const dim3 grid(unsigned(ceil_div(N_, kDecCols)), unsigned(K_ / (steps * kDecStep)));
  const dim3 threads(kDecWarps * 32);
  const float* wsc = kmajor_scales_.get();
#define DSQ_FP8_DECODE(MT, R)                                                                                      \
  launch_dependent(ctx, fp8_decode_kernel<MT, R, X, Y>, grid, threads, 0, values_.get(), wsc, x, ws.acc, ws.tickets, \
                   y, int(M), int(N_), int(K_))
  if (M <= 8 && steps == 4) DSQ_FP8_DECODE(1, 4);
  else if (M <= 8 && steps == 2) DSQ_FP8_DECODE(1, 2);
  else if (M <= 8) DSQ_FP8_DECODE(1, 1);
  else if (M <= 16) DSQ_FP8_DECODE(2, 1);
  else if (M <= 32) DSQ_FP8_DECODE(4, 1);
  else DSQ_FP8_DECODE(8, 1);
#undef DSQ_FP8_DECODE
  last_path_ = Fp8Path::Decode;
}

bool Fp8BlockLinear::decode_fits(int64_t M) const {
  return M >= 1 && M <= kFp8DecodeMaxRows && N_ % 16 == 0 && K_ % kDecStep == 0;
}

void Fp8BlockLinear::run_decode_f32(const GpuContext& ctx, const float* x, int64_t M, float* y, void* workspace) {
  DSQ_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0, what_, ": fp32 activations must be 16-byte aligned");
  launch_decode(ctx, x, M, y, carve(workspace, M));
}

void Fp8BlockLinear::run(const GpuContext& ctx, const __nv_bfloat16* x, int64_t M, __nv_bfloat16* y,
                         void* workspace) {
  DSQ_CHECK(M > 0, what_, ": FP8 linear called with ", M, " rows");
  const Workspace ws = carve(workspace, M);
  Fp8Path path = path_;
  if (path == Fp8Path::Auto) path = M <= kFp8DecodeAutoRows && decode_fits(M) ? Fp8Path::Decode : Fp8Path::CublasLt;
  if (path == Fp8Path::Decode) {
    launch_decode(ctx, x, M, y, ws);
    return;
  }
  const int64_t lt_rows = path == Fp8Path::CublasLt ? cublaslt_rows(ctx, M) : 0;
  if (lt_rows > 0) {
    quantize_act_fp8_1x128(ctx, x, M, K_, ws.codes, ws.scales, act_order_, lt_rows);
    if (lt_rows == M) {
      run_cublaslt(ctx, ws.codes, ws.scales, M, y);
    } else {  // padded rows compute garbage into scratch; only the first M rows are kept
      run_cublaslt(ctx, ws.codes, ws.scales, lt_rows, ws.padded_out);
      DSQ_CUDA_CHECK(cudaMemcpyAsync(y, ws.padded_out, size_t(M * N_) * sizeof(__nv_bfloat16),
                                     cudaMemcpyDeviceToDevice, ctx.stream()));
    }
    last_path_ = Fp8Path::CublasLt;
    return;
  }
  quantize_act_fp8_1x128(ctx, x, M, K_, ws.codes, ws.scales, ScaleOrder::OuterMajor, M);
  const dim3 grid(unsigned(ceil_div(N_, kFbTile)), unsigned(ceil_div(M, kFbTile)));
  fp8_block_fallback_kernel<<<grid, 256, 0, ctx.stream()>>>(ws.codes, ws.scales, true, values_.get(),
                                                            kmajor_scales_.get(), y, int(M), int(N_), int(K_));
  DSQ_CUDA_CHECK_LAUNCH();
  last_path_ = Fp8Path::Fallback;
}

}  // namespace dsq::cuda
