// CudaOps' linear layers: linear, linear_many, linear_grouped and moe_experts (semantics
// in backend/ops.h), and the preparation of weights into the LinearCache (linear_cache.h).
//
// Which device form a weight gets (prepare()), by precision (see cuda_ops.h):
//   F32   every weight dequantized exactly to fp32 → cuBLAS fp32 GEMM, no TF32.
//   Fast  dense f32 stays fp32 (the mHC weights: tiny, and precision-sensitive);
//         FP8-block → Fp8BlockLinear (fp8 activations per 1×128, quantized from the
//         fp32 activations; fp32 output, through bf16 at prefill sizes); a grouped
//         weight (attn.wo_a) is one Fp8BlockLinear, all groups in one launch;
//         INT4 group-128 with bf16 scales → the W4A16 kernels (int4_linear.h);
//         MXFP4 with out-features % 16, in-features % 512 → mxfp4_linear.h's kernels;
//         everything else (dense bf16/f16, MXFP4, shapes those kernels refuse) →
//         bf16 at load, bf16 activations, cuBLAS with fp32 accumulation.
// Dense weights (fp32 or bf16 on the device) at <= kGemvMaxRows rows run through
// dense_gemv instead, with the fp32 activations unrounded; linear_many puts all such
// weights of one input into one launch, and its FP8 weights of one width into one
// concatenated Fp8BlockLinear (FusedFp8: one launch, one activation quantization).
// Weights are prepared on first use and kept (cuda_ops.h: keyed by address).
//
// Every GEMM computes y[n, N] = x[n, K] · W[N, K]ᵀ on row-major data. cuBLAS is
// column-major, so it runs as yᵀ = W · xᵀ with W transposed ("TN", as bf16_linear.cpp);
// row strides of x and y become leading dimensions, which is what lets linear_grouped
// run its groups as one strided-batched GEMM over column slices.
//
// moe_experts sorts the T·k (token, expert) pairs by expert on the GPU, runs each expert
// on its contiguous rows, and combines per token in a fixed order (no atomics):
//   route entries [T, k] → count per expert → first row per expert (prefix sum)
//   → row of every entry (token order within an expert, as the CPU) → gather x rows
//   → gate/up, SwiGLU, down per expert → out[t] = Σ_j w[t][j] · y[row(t, j)].
// The expert offsets go to the host once per call (one small synchronisation): the
// grouped INT4 kernels and the per-expert GEMM loop plan their launches from them.
// Decode (stacked INT4 experts, T·k <= kMoeDecodeMaxSlots) skips all of that: the ids
// stay on the device and int4_moe_decode.h runs the experts with no synchronisation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/int4_moe_decode.h"
#include "backend/cuda/dense_gemv.h"
#include "backend/cuda/l2_prefetch.h"

namespace dsq::cuda {

namespace {

using Kind = PreparedLinear::Kind;

// Scratch slots of this file (CudaOps::scratch; 0–9 are shared with cuda_ops.cpp, which
// uses none).
enum ScratchSlot : int {
  kSlotActBf16 = 0,       // a GEMM's activations as bf16
  kSlotFp8Workspace = 1,  // Fp8BlockLinear workspace, kept zero between calls
  kSlotMoeCounters = 2,   // the single-token MoE's tile counters, kept zero between calls
  kSlotInt4Dequant = 3,   // one INT4 expert dequantized to bf16 (many-row path)
  kSlotMoeIndex = 4,      // the expert permutation
  kSlotMoeRows = 5,       // token rows sorted by expert
  kSlotMoeGate = 6,       // gate (or interleaved gate/up) outputs; SwiGLU output
  kSlotMoeUp = 7,         // up outputs; or the bf16 SwiGLU output (INT4 path)
  kSlotMoeOut = 8,        // down projection outputs
  kSlotFp8Scratch = 9,    // Fp8BlockLinear workspace of the non-decode paths (not zeroed)
};

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

std::string describe(const QuantizedMatrix& w) {
  return std::string(weight_format_name(w.format)) + " weight [" + std::to_string(w.rows) + ", " +
         std::to_string(w.cols) + "]";
}

// ---- kernels ----

// dst [rows, cols] bf16 (dense) = src rows of `cols` floats, `src_ld` apart (RNE).
__global__ void f32_to_bf16_kernel(const float* __restrict__ src, int64_t src_ld, int64_t rows, int64_t cols,
                                   __nv_bfloat16* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  dst[i] = __float2bfloat16(src[(i / cols) * src_ld + i % cols]);
}

// Block e scans the routing entries (chosen [T·k], flattened) in order and handles those
// that picked expert e. Without first_row it counts them into count[e]; with it, entry i
// gets row first_row[e] + (its rank among expert e's entries): row_token[row] = i / k,
// entry_row[i] = row. Ranks follow entry order, so rows are in token order per expert
// and the permutation is deterministic. Entries naming no expert in [0, E) get no row.
__global__ void expert_rows_kernel(const int64_t* __restrict__ chosen, int64_t entries, int64_t k,
                                   const int64_t* __restrict__ first_row, int64_t* __restrict__ count,
                                   int64_t* __restrict__ row_token, int64_t* __restrict__ entry_row) {
  constexpr int kWarps = kThreads / 32;
  __shared__ int warp_hits[kWarps];
  const int64_t e = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t seen = 0;  // entries of expert e before this pass (same in every thread)
  for (int64_t base = 0; base < entries; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool hit = i < entries && chosen[i] == e;
    const unsigned mask = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(mask);
    __syncthreads();
    if (hit && first_row) {
      int64_t rank = seen + __popc(mask & ((1u << lane) - 1u));
      for (int w = 0; w < warp; ++w) rank += warp_hits[w];
      const int64_t row = first_row[e] + rank;
      row_token[row] = i / k;
      entry_row[i] = row;
    }
    for (int w = 0; w < kWarps; ++w) seen += warp_hits[w];
    __syncthreads();
  }
  if (!first_row && threadIdx.x == 0) count[e] = seen;
}

// first_row[e] = Σ_{e' < e} count[e'] for e = 0..E (first_row[E]: entries with a valid
// expert). E is at most a few hundred: one thread.
__global__ void expert_first_rows_kernel(const int64_t* __restrict__ count, int64_t E, int64_t* __restrict__ first_row) {
  int64_t sum = 0;
  for (int64_t e = 0; e < E; ++e) {
    first_row[e] = sum;
    sum += count[e];
  }
  first_row[E] = sum;
}

// dst[r] = x[row_token[r]] for `rows` rows of H values, as float or bf16.
template <typename Out>
__global__ void gather_token_rows_kernel(const float* __restrict__ x, const int64_t* __restrict__ row_token,
                                         int64_t rows, int64_t H, Out* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * H) return;
  const float v = x[row_token[i / H] * H + i % H];
  if constexpr (std::is_same_v<Out, float>) dst[i] = v;
  else dst[i] = __float2bfloat16(v);
}

// out[t] = Σ_{j<k} weights[t][j] · y[entry_row[t][j]], j in order (deterministic).
__global__ void combine_experts_kernel(const float* __restrict__ y, const int64_t* __restrict__ entry_row,
                                       const float* __restrict__ weights, int64_t T, int64_t k, int64_t H,
                                       float* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i / H, c = i % H;
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) sum += weights[t * k + j] * y[entry_row[t * k + j] * H + c];
  out[i] = sum;
}

// ---- GEMM launch helpers ----

// For b < batch: y_b[n, N] = x_b[n, K] · W_b[N, K]ᵀ, with W_b = w + b·w_stride (dense
// rows of K), x_b = x + b·x_stride (rows x_ld apart), y_b = y + b·y_stride (rows y_ld
// apart), all in elements. `type`: the dtype of w and x (fp32 or bf16); fp32 accumulation
// and output.
void gemm_tn(const GpuContext& ctx, cudaDataType_t type, const void* w, int64_t w_stride, const void* x,
             int64_t x_ld, int64_t x_stride, float* y, int64_t y_ld, int64_t y_stride, int64_t n, int64_t N,
             int64_t K, int64_t batch) {
  const float one = 1.0f, zero = 0.0f;
  // The handle is shared with other ops: make sure fp32 inputs are never cut to TF32.
  DSQ_CUBLAS_CHECK(cublasSetMathMode(ctx.blas(), CUBLAS_DEFAULT_MATH));
  DSQ_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(n), int(K), &one, w,
                                              type, int(K), w_stride, x, type, int(x_ld), x_stride, &zero, y,
                                              CUDA_R_32F, int(y_ld), y_stride, int(batch), CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
}

// n rows of `cols` floats (x_ld apart) as dense bf16 in the activation scratch slot.
const __nv_bfloat16* activations_bf16(CudaOps& ops, const float* x, int64_t x_ld, int64_t n, int64_t cols) {
  auto* xb = static_cast<__nv_bfloat16*>(ops.scratch(kSlotActBf16, size_t(n * cols) * sizeof(__nv_bfloat16)));
  f32_to_bf16_kernel<<<blocks_for(n * cols), kThreads, 0, ops.context().stream()>>>(x, x_ld, n, cols, xb);
  DSQ_CUDA_CHECK_LAUNCH();
  return xb;
}

// The FP8 workspace for n rows of `lin`. The decode kernel's is shared by every FP8
// weight and kept zero (the kernel leaves it so); the other paths get scratch of their own.
void* fp8_workspace(CudaOps& ops, LinearCache& cache, const Fp8BlockLinear& lin, int64_t n) {
  const size_t bytes = lin.workspace_bytes(n);
  if (!lin.uses_decode(n)) return ops.scratch(kSlotFp8Scratch, bytes);
  void* ws = ops.scratch(kSlotFp8Workspace, bytes);
  if (ws != cache.fp8_workspace) {
    cache.fp8_workspace = ws;
    cache.fp8_workspace_zeroed = 0;
  }
  if (bytes > cache.fp8_workspace_zeroed) {
    DSQ_CUDA_CHECK(cudaMemsetAsync(ws, 0, bytes, ops.context().stream()));
    cache.fp8_workspace_zeroed = bytes;
  }
  return ws;
}

// dst [rows, cols] (dense) = src rows of `cols` floats, `src_ld` apart.
__global__ void copy_f32_rows_kernel(const float* __restrict__ src, int64_t src_ld, int64_t rows, int64_t cols,
                                     float* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  dst[i] = src[(i / cols) * src_ld + i % cols];
}

// One Fp8BlockLinear on n rows of fp32 x (x_ld apart) into its output ranges. Its kernels
// read 16-byte aligned rows: other inputs are copied densely first.
void run_fp8(CudaOps& ops, LinearCache& cache, Fp8BlockLinear& lin, const float* x, int64_t x_ld, int64_t n,
             const Fp8Output<float>* outs, int count) {
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || x_ld % 4 != 0) {
    const int64_t width = outs[count - 1].x_col + lin.cols();
    auto* dense = static_cast<float*>(ops.scratch(kSlotActBf16, size_t(n * width) * sizeof(float)));
    copy_f32_rows_kernel<<<blocks_for(n * width), kThreads, 0, ops.context().stream()>>>(x, x_ld, n, width, dense);
    DSQ_CUDA_CHECK_LAUNCH();
    x = dense;
    x_ld = width;
  }
  lin.run_f32(ops.context(), x, x_ld, n, outs, count, fp8_workspace(ops, cache, lin, n));
}

// A prepared weight on n rows: for g < p.groups,
//   y[:, g·R:(g+1)·R] = x[:, g·C:(g+1)·C] · W[g·R:(g+1)·R, :]ᵀ   (R = rows/groups, C = cols)
// with x rows x_ld apart and y rows y_ld apart.
void apply(CudaOps& ops, LinearCache& cache, PreparedLinear& p, const float* x, int64_t x_ld, int64_t n, float* y,
           int64_t y_ld, bool allow_gemv = false) {
  if (n == 0) return;
  const GpuContext& ctx = ops.context();
  const int64_t R = p.rows / p.groups, C = p.cols, G = p.groups;
  // Few rows: one pass over the weight with the fp32 activations as they are (linear and
  // linear_grouped; the per-expert loop below keeps one GEMM path for all its experts).
  const void* dense = p.kind == Kind::F32 ? static_cast<const void*>(p.f32.get())
                      : p.kind == Kind::Bf16 ? static_cast<const void*>(p.bf16.get())
                                             : nullptr;
  if (allow_gemv && dense && dense_gemv_fits(dense, x, x_ld, y, y_ld, n, C)) {
    dense_gemv(ctx, dense, p.kind == Kind::Bf16, R, C, G, x, x_ld, C, n, y, y_ld);
    return;
  }
  switch (p.kind) {
    case Kind::F32:
      gemm_tn(ctx, CUDA_R_32F, p.f32.get(), R * C, x, x_ld, C, y, y_ld, R, n, R, C, G);
      return;
    case Kind::Bf16: {
      const __nv_bfloat16* xb = activations_bf16(ops, x, x_ld, n, G * C);
      gemm_tn(ctx, CUDA_R_16BF, p.bf16.get(), R * C, xb, G * C, C, y, y_ld, R, n, R, C, G);
      return;
    }
    case Kind::Fp8: {
      std::vector<Fp8Output<float>> outs;
      for (int64_t g = 0; g < G; ++g) outs.push_back({y + g * R, R, y_ld, g * C});
      run_fp8(ops, cache, *p.fp8, x, x_ld, n, outs.data(), int(G));
      return;
    }
    case Kind::Int4: {
      DSQ_CHECK(G == 1 && y_ld == R, "linear: INT4 kernel output must be dense (internal)");
      const __nv_bfloat16* xb = activations_bf16(ops, x, x_ld, n, C);
      auto* dequant = n > kDecodeMaxRows ? static_cast<__nv_bfloat16*>(ops.scratch(
                                               kSlotInt4Dequant, size_t(R * C) * sizeof(__nv_bfloat16)))
                                         : nullptr;
      int4_linear(ctx, *p.int4, 0, xb, n, y, dequant);
      return;
    }
    case Kind::Mxfp4: {
      DSQ_CHECK(G == 1 && y_ld == R, "linear: MXFP4 kernel output must be dense (internal)");
      const __nv_bfloat16* xb = activations_bf16(ops, x, x_ld, n, C);
      auto* dequant = n > kMxfp4DecodeMaxRows ? static_cast<__nv_bfloat16*>(ops.scratch(
                                                    kSlotInt4Dequant, size_t(R * C) * sizeof(__nv_bfloat16)))
                                              : nullptr;
      mxfp4_linear(ctx, *p.mxfp4, 0, xb, n, y, dequant);
      return;
    }
  }
}

// ---- weight preparation ----

// INT4 weights the W4A16 kernels take as they are: group 128, bf16 scales, and
// out-features % 16, in-features % 512.
bool int4_kernel_fits(const QuantizedMatrix& w) {
  return w.format == WeightFormat::Int4Group && w.group_size == 128 && w.scales.dtype() == DType::BF16 &&
         w.rows % 16 == 0 && w.cols % 512 == 0;
}

// FP8 weights Fp8BlockLinear takes, split into `groups` row slices on block boundaries.
// In-features must be a multiple of 256, not only of 128: the decode kernel needs it,
// and with K = 128 the cuBLASLt path returned wrong results on an H100 (relative error
// 0.7 in test_cuda_linear_ops); such weights take the bf16 path.
bool fp8_kernel_fits(const QuantizedMatrix& w, int64_t groups) {
  const int64_t R = w.rows / groups;
  return w.format == WeightFormat::Fp8Block && w.group_size == 128 && w.cols % 256 == 0 && R % 8 == 0 &&
         (groups == 1 || R % 128 == 0) && groups <= kFp8MaxOutputs;
}

// Several FP8-block weights of one width stacked by rows (every one but the last with
// whole 128-row blocks, so their scale rows stack too) as one Fp8BlockLinear whose
// activation rows are groups·cols wide.
std::unique_ptr<Fp8BlockLinear> fp8_linear(const std::vector<const QuantizedMatrix*>& parts, int64_t groups,
                                           const std::string& what) {
  const int64_t cols = parts[0]->cols;
  std::vector<uint8_t> values;
  std::vector<float> scales;
  int64_t rows = 0;
  for (const QuantizedMatrix* w : parts) {
    const uint8_t* v = w->values.data<uint8_t>();
    values.insert(values.end(), v, v + w->rows * cols);
    for (int64_t i = 0; i < w->scales.numel(); ++i) scales.push_back(w->scales.get_f32(i));
    rows += w->rows;
  }
  return std::make_unique<Fp8BlockLinear>(values.data(), scales.data(), rows, cols, what, groups);
}

PreparedLinear prepare(const QuantizedMatrix& w, int64_t groups, Precision precision) {
  w.validate(describe(w));
  DSQ_CHECK(w.values.device() == Device::CPU, describe(w), ": weights must be host tensors");
  PreparedLinear p;
  p.format = w.format;
  p.rows = w.rows;
  p.cols = w.cols;
  p.groups = groups;
  const bool dense_f32 = w.format == WeightFormat::Dense && w.values.dtype() == DType::F32;
  if (precision == Precision::F32 || dense_f32) {
    p.kind = Kind::F32;
    const Tensor f32 = dense_f32 ? w.values : w.dequantize();
    p.f32 = DeviceBuffer<float>::from_host(f32.data<float>(), size_t(f32.numel()));
  } else if (fp8_kernel_fits(w, groups)) {
    p.kind = Kind::Fp8;
    p.fp8 = fp8_linear({&w}, groups, describe(w));
  } else if (groups == 1 && int4_kernel_fits(w)) {
    p.kind = Kind::Int4;
    p.int4 = std::make_unique<Int4ExpertWeights>(w.values.data<int32_t>(), w.scales.data<uint16_t>(), 1, w.rows,
                                                 w.cols, describe(w));
  } else if (groups == 1 && w.format == WeightFormat::Mxfp4 && Mxfp4ExpertWeights::fits(w.rows, w.cols)) {
    p.kind = Kind::Mxfp4;  // 4.25 bits per weight on the device (mxfp4_linear.h)
    p.mxfp4 = std::make_unique<Mxfp4ExpertWeights>(w.values.data<uint8_t>(), w.scales.data<uint8_t>(), 1, w.rows,
                                                   w.cols, describe(w));
  } else {
    // bf16 holds dense bf16, MXFP4 (e2m1 · 2^k) and bf16-scaled INT4 (bf16(q·s)) exactly;
    // f16 and other scales round once here.
    p.kind = Kind::Bf16;
    const bool dense_bf16 = w.format == WeightFormat::Dense && w.values.dtype() == DType::BF16;
    const Tensor bf16 = dense_bf16 ? w.values
                                   : (w.format == WeightFormat::Dense ? w.values : w.dequantize()).cast(DType::BF16);
    p.bf16 = DeviceBuffer<uint16_t>::from_host(bf16.data<uint16_t>(), size_t(bf16.numel()));
  }
  return p;
}

// linear_many's FP8 weights `parts` (in this order) as one concatenated Fp8BlockLinear.
FusedFp8& fused_fp8(LinearCache& cache, const std::vector<const QuantizedMatrix*>& parts) {
  auto it = cache.fused_fp8.find(parts[0]);
  const auto matches = [&](const FusedFp8& f) {
    if (f.parts != parts || f.cols != parts[0]->cols) return false;
    for (size_t i = 0; i < parts.size(); ++i)
      if (f.rows[i] != parts[i]->rows || parts[i]->format != WeightFormat::Fp8Block) return false;
    return true;
  };
  if (it != cache.fused_fp8.end() && matches(it->second)) return it->second;
  FusedFp8 f;
  f.parts = parts;
  f.cols = parts[0]->cols;
  std::string what = "linear_many";
  for (const QuantizedMatrix* w : parts) {
    w->validate(describe(*w));
    f.rows.push_back(w->rows);
    what += " " + describe(*w);
  }
  f.lin = fp8_linear(parts, 1, what);
  return cache.fused_fp8.insert_or_assign(parts[0], std::move(f)).first->second;
}

// The FP8 weights among linear_many's `ws` that run concatenated: every one the FP8
// kernels take (Fast), when there are 2 to kFp8MaxOutputs of them and at most one has
// rows that are not whole 128-row blocks (it goes last). Indices into ws; empty: none.
std::vector<int64_t> fusable_fp8(const QuantizedMatrix* const* ws, int64_t count, Precision precision) {
  std::vector<int64_t> whole, ragged;
  if (precision != Precision::Fast) return {};
  for (int64_t i = 0; i < count; ++i)
    if (fp8_kernel_fits(*ws[i], 1)) (ws[i]->rows % 128 == 0 ? whole : ragged).push_back(i);
  if (ragged.size() > 1) return {};
  whole.insert(whole.end(), ragged.begin(), ragged.end());
  if (whole.size() < 2 || whole.size() > size_t(kFp8MaxOutputs)) return {};
  return whole;
}

PreparedLinear& prepared(LinearCache& cache, const QuantizedMatrix& w, int64_t groups, Precision precision) {
  auto it = cache.linears.find(&w);
  if (it == cache.linears.end() || !it->second.matches(w, groups))
    it = cache.linears.insert_or_assign(&w, prepare(w, groups, precision)).first;
  return it->second;
}

// Checks expert e's three weights against gate/up [F, H] and down [H, F].
void check_expert_shapes(const backend::ExpertLinears& x, int64_t e, int64_t F, int64_t H) {
  const auto check = [&](const QuantizedMatrix* w, const char* which, int64_t rows, int64_t cols) {
    DSQ_CHECK(w != nullptr, "moe_experts: expert ", e, " has no ", which, " weight");
    DSQ_CHECK(w->rows == rows && w->cols == cols, "moe_experts: expert ", e, " ", which, " is a ", describe(*w),
              ", expected [", rows, ", ", cols, "] (hidden ", H, ", expert width ", F, ")");
  };
  check(x.gate, "gate", F, H);
  check(x.up, "up", F, H);
  check(x.down, "down", H, F);
}

// The E experts stacked for the grouped INT4 kernels: gate/up interleaved [E][2F, H]
// and down [E][H, F].
void stack_int4_experts(PreparedExperts& pe, const backend::ExpertLinears* experts) {
  const int64_t E = pe.n_experts, H = pe.hidden, F = pe.inter;
  const auto gather = [&](const QuantizedMatrix* backend::ExpertLinears::*which, std::vector<int32_t>& packed,
                          std::vector<uint16_t>& scales) {
    const QuantizedMatrix& first = *(experts[0].*which);
    const size_t words = size_t(first.values.numel()), groups = size_t(first.scales.numel());
    packed.resize(size_t(E) * words);
    scales.resize(size_t(E) * groups);
    for (int64_t e = 0; e < E; ++e) {
      const QuantizedMatrix& w = *(experts[e].*which);
      std::memcpy(&packed[size_t(e) * words], w.values.data<int32_t>(), words * sizeof(int32_t));
      std::memcpy(&scales[size_t(e) * groups], w.scales.data<uint16_t>(), groups * sizeof(uint16_t));
    }
  };
  std::vector<int32_t> w1, w3, w2;
  std::vector<uint16_t> s1, s3, s2;
  gather(&backend::ExpertLinears::gate, w1, s1);
  gather(&backend::ExpertLinears::up, w3, s3);
  pe.gate_up = std::make_unique<Int4ExpertWeights>(
      Int4ExpertWeights::gate_up(w1.data(), s1.data(), w3.data(), s3.data(), E, F, H, "routed experts gate/up"));
  gather(&backend::ExpertLinears::down, w2, s2);
  pe.down = std::make_unique<Int4ExpertWeights>(w2.data(), s2.data(), E, H, F, "routed experts down");
}

PreparedExperts& prepared_experts(LinearCache& cache, const backend::ExpertLinears* experts, int64_t E, int64_t H,
                                  Precision precision) {
  const int64_t F = experts[0].gate ? experts[0].gate->rows : 0;
  for (int64_t e = 0; e < E; ++e) check_expert_shapes(experts[e], e, F, H);
  const QuantizedMatrix* key = experts[0].gate;
  auto it = cache.experts.find(key);
  if (it != cache.experts.end() && it->second.n_experts == E && it->second.hidden == H && it->second.inter == F)
    return it->second;
  PreparedExperts pe;
  pe.n_experts = E;
  pe.hidden = H;
  pe.inter = F;
  bool int4 = precision == Precision::Fast && F % 8 == 0;
  for (int64_t e = 0; e < E && int4; ++e)
    int4 = int4_kernel_fits(*experts[e].gate) && int4_kernel_fits(*experts[e].up) && int4_kernel_fits(*experts[e].down);
  if (int4) {
    for (int64_t e = 0; e < E; ++e) {
      experts[e].gate->validate(describe(*experts[e].gate));
      experts[e].up->validate(describe(*experts[e].up));
      experts[e].down->validate(describe(*experts[e].down));
    }
    stack_int4_experts(pe, experts);
  } else {
    // Per expert, one GEMM each: fine for the tiny fixtures and for checking (F32), and
    // for any format the grouped kernels do not take; not a serving path for 256 experts.
    for (int64_t e = 0; e < E; ++e) {
      pe.gate.push_back(prepare(*experts[e].gate, 1, precision));
      pe.up.push_back(prepare(*experts[e].up, 1, precision));
      pe.down_each.push_back(prepare(*experts[e].down, 1, precision));
    }
  }
  return cache.experts.insert_or_assign(key, std::move(pe)).first->second;
}

}  // namespace

void CudaOps::linear(const QuantizedMatrix& w, const float* x, int64_t n, float* y) {
  if (n == 0) return;
  PreparedLinear& p = prepared(linears_, w, 1, precision_);
  apply(*this, linears_, p, x, w.cols, n, y, w.rows, true);
}

void CudaOps::prefetch_weights(const QuantizedMatrix& w) {
  // Only a weight already prepared: preparing allocates, which must not happen where the
  // call may be under stream capture (the graph's first, eager run prepares it).
  const auto it = linears_.linears.find(&w);
  if (it == linears_.linears.end()) return;
  const PreparedLinear& p = it->second;
  switch (p.kind) {
    case Kind::F32: prefetch_to_l2(ctx(), p.f32.get(), p.f32.bytes()); break;
    case Kind::Bf16: prefetch_to_l2(ctx(), p.bf16.get(), p.bf16.bytes()); break;
    case Kind::Fp8: prefetch_to_l2(ctx(), p.fp8->values(), p.fp8->values_bytes()); break;
    case Kind::Int4: prefetch_to_l2(ctx(), p.int4->tiles(), size_t(p.rows) * size_t(p.cols) / 2); break;
    case Kind::Mxfp4: break;  // the release experts run through moe_experts, never prefetched
  }
}

const float* CudaOps::prepared_f32(const QuantizedMatrix& w) {
  PreparedLinear& p = prepared(linears_, w, 1, precision_);
  return p.kind == Kind::F32 ? p.f32.get() : nullptr;
}

void CudaOps::linear_many(const QuantizedMatrix* const* ws, float* const* ys, int64_t count, const float* x,
                          int64_t n) {
  if (n == 0 || count == 0) return;
  for (int64_t i = 0; i < count; ++i)
    DSQ_CHECK(ws[i]->cols == ws[0]->cols, "linear_many: ", describe(*ws[i]), " and ", describe(*ws[0]),
              " do not share an input width");
  // FP8 weights run concatenated in one launch where they can; dense weights that
  // dense_gemv takes share one launch per weight dtype; the rest run one by one.
  const std::vector<int64_t> fp8 = fusable_fp8(ws, count, precision_);
  std::vector<bool> done(size_t(count), false);
  if (!fp8.empty()) {
    std::vector<const QuantizedMatrix*> parts;
    std::vector<Fp8Output<float>> outs;
    for (int64_t i : fp8) {
      parts.push_back(ws[i]);
      outs.push_back({ys[i], ws[i]->rows, ws[i]->rows, 0});
      done[size_t(i)] = true;
    }
    run_fp8(*this, linears_, *fused_fp8(linears_, parts).lin, x, ws[0]->cols, n, outs.data(), int(outs.size()));
  }
  std::vector<GemvTarget> by_dtype[2];  // [0]: fp32 weights, [1]: bf16
  for (int64_t i = 0; i < count; ++i) {
    if (done[size_t(i)]) continue;
    PreparedLinear& p = prepared(linears_, *ws[i], 1, precision_);
    const bool bf16 = p.kind == Kind::Bf16;
    const void* dense = bf16 ? static_cast<const void*>(p.bf16.get())
                        : p.kind == Kind::F32 ? static_cast<const void*>(p.f32.get())
                                              : nullptr;
    std::vector<GemvTarget>& group = by_dtype[bf16 ? 1 : 0];
    if (dense && dense_gemv_fits(dense, x, p.cols, ys[i], p.rows, n, p.cols) && int(group.size()) < kGemvMaxTargets)
      group.push_back({dense, ys[i], p.rows});
    else
      apply(*this, linears_, p, x, p.cols, n, ys[i], p.rows, true);
  }
  for (int b = 0; b < 2; ++b)
    if (!by_dtype[b].empty())
      dense_gemv_many(ctx(), by_dtype[b].data(), int(by_dtype[b].size()), b == 1, ws[0]->cols, x, ws[0]->cols, n);
}

void CudaOps::linear_grouped(const QuantizedMatrix& w, int64_t groups, const float* x, int64_t n, float* y) {
  DSQ_CHECK(groups > 0 && w.rows % groups == 0, "linear_grouped: ", describe(w), " does not split into ", groups,
            " groups of rows");
  if (n == 0) return;
  PreparedLinear& p = prepared(linears_, w, groups, precision_);
  apply(*this, linears_, p, x, groups * w.cols, n, y, w.rows, true);
}

void CudaOps::moe_experts(const float* x, int64_t T, int64_t hidden, const backend::ExpertLinears* experts,
                          int64_t n_experts, const int64_t* chosen, const float* weights, int64_t k, float limit,
                          float* out, backend::ExpertInputTap* tap) {
  DSQ_CHECK(tap == nullptr, "moe_experts: the CUDA backend does not report expert inputs (calibrate on the CPU)");
  DSQ_CHECK(n_experts > 0 && k > 0 && hidden > 0, "moe_experts: ", n_experts, " experts, k = ", k, ", hidden ",
            hidden);
  if (T == 0) return;
  PreparedExperts& pe = prepared_experts(linears_, experts, n_experts, hidden, precision_);
  const int64_t E = n_experts, H = hidden, F = pe.inter, entries = T * k;
  const cudaStream_t stream = ctx().stream();
  // λ <= 0 means no clamp (cpu/swiglu.h); the kernels always clamp, at ±∞ then.
  const float clamp = limit > 0 ? limit : INFINITY;

  if (pe.stacked() && entries <= kMoeDecodeMaxSlots) {
    // Ids outside [0, E) cannot be refused here: they turn their token's row to NaN.
    const MoeDecodeScratch need = moe_decode_scratch(*pe.gate_up, *pe.down, entries);
    auto* gate_up = static_cast<float*>(scratch(kSlotMoeGate, need.gate_up_partials * sizeof(float)));
    auto* h = static_cast<__nv_bfloat16*>(scratch(kSlotMoeUp, need.activations * sizeof(__nv_bfloat16)));
    auto* down = static_cast<float*>(scratch(kSlotMoeOut, need.down_partials * sizeof(float)));
    auto* counters = static_cast<unsigned*>(zeroed_scratch(kSlotMoeCounters, need.tile_counters * sizeof(unsigned)));
    int4_moe_decode(ctx(), *pe.gate_up, *pe.down, x, T, chosen, weights, k, clamp, out, gate_up, h, down, counters);
    return;
  }

  // The permutation: entries sorted by expert (see the file comment).
  auto* index = static_cast<int64_t*>(scratch(kSlotMoeIndex, size_t(2 * entries + 2 * E + 1) * sizeof(int64_t)));
  int64_t* row_token = index;               // [entries]
  int64_t* entry_row = index + entries;     // [entries]
  int64_t* count = entry_row + entries;     // [E]
  int64_t* first_row = count + E;           // [E + 1]
  expert_rows_kernel<<<unsigned(E), kThreads, 0, stream>>>(chosen, entries, k, nullptr, count, nullptr, nullptr);
  DSQ_CUDA_CHECK_LAUNCH();
  expert_first_rows_kernel<<<1, 1, 0, stream>>>(count, E, first_row);
  DSQ_CUDA_CHECK_LAUNCH();
  expert_rows_kernel<<<unsigned(E), kThreads, 0, stream>>>(chosen, entries, k, first_row, nullptr, row_token,
                                                           entry_row);
  DSQ_CUDA_CHECK_LAUNCH();
  std::vector<int64_t> offsets(size_t(E + 1));
  DSQ_CUDA_CHECK(cudaMemcpyAsync(offsets.data(), first_row, offsets.size() * sizeof(int64_t),
                                 cudaMemcpyDeviceToHost, stream));
  ctx().synchronize();
  DSQ_CHECK(offsets[size_t(E)] == entries, "moe_experts: ", entries - offsets[size_t(E)],
            " routing entries name an expert outside [0, ", E, ")");

  auto* y_rows = static_cast<float*>(scratch(kSlotMoeOut, size_t(entries * H) * sizeof(float)));  // [entries, H]
  if (pe.stacked()) {
    auto* xb = static_cast<__nv_bfloat16*>(scratch(kSlotMoeRows, size_t(entries * H) * sizeof(__nv_bfloat16)));
    gather_token_rows_kernel<<<blocks_for(entries * H), kThreads, 0, stream>>>(x, row_token, entries, H, xb);
    DSQ_CUDA_CHECK_LAUNCH();
    auto* gate_up = static_cast<float*>(scratch(kSlotMoeGate, size_t(entries * 2 * F) * sizeof(float)));
    auto* h = static_cast<__nv_bfloat16*>(scratch(kSlotMoeUp, size_t(entries * F) * sizeof(__nv_bfloat16)));
    int64_t most_rows = 0;
    for (int64_t e = 0; e < E; ++e) most_rows = std::max(most_rows, offsets[size_t(e + 1)] - offsets[size_t(e)]);
    auto* dequant = most_rows > kDecodeMaxRows
                        ? static_cast<__nv_bfloat16*>(scratch(kSlotInt4Dequant, size_t(2 * F * H) * sizeof(__nv_bfloat16)))
                        : nullptr;
    int4_grouped_swiglu(ctx(), *pe.gate_up, xb, offsets, clamp, h, gate_up, dequant);
    int4_grouped_linear(ctx(), *pe.down, h, offsets, y_rows, dequant);
  } else {
    auto* xr = static_cast<float*>(scratch(kSlotMoeRows, size_t(entries * H) * sizeof(float)));
    gather_token_rows_kernel<<<blocks_for(entries * H), kThreads, 0, stream>>>(x, row_token, entries, H, xr);
    DSQ_CUDA_CHECK_LAUNCH();
    auto* gate = static_cast<float*>(scratch(kSlotMoeGate, size_t(entries * F) * sizeof(float)));  // [entries, F]
    auto* up = static_cast<float*>(scratch(kSlotMoeUp, size_t(entries * F) * sizeof(float)));      // [entries, F]
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
      apply(*this, linears_, pe.gate[size_t(e)], xr + r0 * H, H, rows, gate + r0 * F, F);
      apply(*this, linears_, pe.up[size_t(e)], xr + r0 * H, H, rows, up + r0 * F, F);
    }
    swiglu(gate, up, entries * F, limit, gate);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
      apply(*this, linears_, pe.down_each[size_t(e)], gate + r0 * F, F, rows, y_rows + r0 * H, H);
    }
  }
  combine_experts_kernel<<<blocks_for(T * H), kThreads, 0, stream>>>(y_rows, entry_row, weights, T, k, H, out);
  DSQ_CUDA_CHECK_LAUNCH();
}

}  // namespace dsq::cuda
