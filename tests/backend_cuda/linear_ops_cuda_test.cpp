// GPU-vs-CPU checks of CudaOps' linear layers (linear_ops.cu): linear, linear_grouped and
// moe_experts against CpuOps (the fp32 reference), for every weight format (dense
// f32/bf16/f16, FP8 block with f32/bf16/e8m0 scales, INT4 with bf16 scales in groups of
// 128 or f32 scales in groups of 32, MXFP4) × both precisions, at tiny shapes and at
// DeepSeek-V4-Flash's (wq_a 1024×4096, wq_b 32768×1024, wkv 512×4096, wo_b 4096×8192;
// wo_a 8 groups of 1024×4096; experts 2048×4096 / 4096×2048, 16 of them instead of
// 256), for M in {1, 5, 64, 300}; MoE routing is ragged, with empty experts. GPU outputs
// start as NaN, so an element never written fails (op_check.h).
//
// Error metric: relative L2, ‖gpu − cpu‖ / ‖cpu‖; any NaN/Inf fails.
//  - Precision::F32: 1e-5. The same fp32 weights and inputs; only the GEMM's summation
//    order differs (≈ 2⁻²⁴·√K ≈ 4e-6 at K = 8192 in the worst case, ~1e-7 typical).
//  - Precision::Fast: a rounding model predicts the error from what each path rounds,
//    and the measured error must lie within [model/4, 2·model] — tight enough to catch a
//    wrong kernel choice (fp8 errors are 16× bf16's) and not loose. Rounding a value to
//    p significant bits (nearest) has RMS relative error 2^(1−p)/√12·√E[1/m²] ≈ 0.2125
//    · 2^(1−p) for log-uniform mantissas m, and random errors add in quadrature through
//    a dot product:
//      kBf16 = 1.66e-3 (p = 8): bf16 activations; weights that bf16 cannot hold (dense
//              f16, f32-scaled INT4 or FP8 in the bf16 path); the FP8 path's bf16 output;
//              the INT4 decode kernel's unrounded q·s against the checkpoint's bf16(q·s)
//              (the many-row INT4 GEMM rounds q·s as the checkpoint does, so its error
//              is the activations' alone, 1/√2 of the model: still inside the bounds).
//      kE4m3 = 2.66e-2 (p = 4): FP8 activations (1×128 blocks scaled to amax = 448, so
//              no value of a Gaussian row falls into e4m3's subnormal range).
//    An expert chains two GEMMs through SwiGLU: the product silu(g)·u carries both
//    input errors (×√2), and the down projection adds its own.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/int4_moe_decode.h"
#include "op_check.h"

namespace dsq::test {
namespace {

using cuda::CudaOps;
using cuda::Precision;

constexpr double kF32Tolerance = 1e-5;
constexpr double kBf16 = 1.66e-3;
constexpr double kE4m3 = 2.66e-2;

// ---- random data (fast: the Flash-sized weights hold ~10^8 values) ----

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t bits() {  // splitmix64
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(bits() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
  float symmetric() { return 2.0f * uniform() - 1.0f; }                   // [−1, 1)
  float normal() {  // Box–Muller
    const float u = std::max(uniform(), 1e-7f), v = uniform();
    return std::sqrt(-2.0f * std::log(u)) * std::cos(6.2831853f * v);
  }

 private:
  uint64_t s_;
};

std::vector<float> normals(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = rng.normal();
  return v;
}

// ---- weights in every format ----

enum class Format { DenseF32, DenseBf16, DenseF16, Fp8F32, Fp8Bf16, Fp8E8m0, Int4Bf16G128, Int4F32G32, Mxfp4 };
constexpr Format kAllFormats[] = {Format::DenseF32, Format::DenseBf16,    Format::DenseF16,
                                  Format::Fp8F32,   Format::Fp8Bf16,      Format::Fp8E8m0,
                                  Format::Int4Bf16G128, Format::Int4F32G32, Format::Mxfp4};

const char* format_name(Format f) {
  switch (f) {
    case Format::DenseF32: return "dense f32";
    case Format::DenseBf16: return "dense bf16";
    case Format::DenseF16: return "dense f16";
    case Format::Fp8F32: return "fp8 f32-scales";
    case Format::Fp8Bf16: return "fp8 bf16-scales";
    case Format::Fp8E8m0: return "fp8 e8m0-scales";
    case Format::Int4Bf16G128: return "int4 bf16-scales g128";
    case Format::Int4F32G32: return "int4 f32-scales g32";
    case Format::Mxfp4: return "mxfp4";
  }
  return "?";
}

// A random [rows, cols] weight whose dequantized entries are O(0.02) (so that expert
// activations stay O(1) and SwiGLU's clamp at 10 rarely bites).
QuantizedMatrix random_weight(Format f, int64_t rows, int64_t cols, Rng& rng) {
  QuantizedMatrix w;
  w.rows = rows;
  w.cols = cols;
  const int64_t n = rows * cols;
  switch (f) {
    case Format::DenseF32:
    case Format::DenseBf16:
    case Format::DenseF16: {
      Tensor t = Tensor::zeros(DType::F32, {rows, cols});
      float* v = t.mutable_data<float>();
      for (int64_t i = 0; i < n; ++i) v[i] = 0.03f * rng.symmetric();
      w = QuantizedMatrix::dense(f == Format::DenseF32 ? t : t.cast(f == Format::DenseBf16 ? DType::BF16 : DType::F16));
      break;
    }
    case Format::Fp8F32:
    case Format::Fp8Bf16:
    case Format::Fp8E8m0: {
      w.format = WeightFormat::Fp8Block;
      w.group_size = 128;
      w.values = Tensor::zeros(DType::F8_E4M3, {rows, cols});
      uint8_t* v = w.values.mutable_data<uint8_t>();
      for (int64_t i = 0; i < n; ++i) v[i] = f32_to_f8e4m3(200.0f * rng.symmetric());
      const Shape scale_shape{(rows + 127) / 128, (cols + 127) / 128};
      Tensor s = Tensor::zeros(DType::F32, scale_shape);
      for (int64_t i = 0; i < s.numel(); ++i) s.mutable_data<float>()[i] = 1e-4f * (1.0f + 2.0f * rng.uniform());
      if (f == Format::Fp8F32) w.scales = s;
      if (f == Format::Fp8Bf16) w.scales = s.cast(DType::BF16);
      if (f == Format::Fp8E8m0) {  // 2^-14 … 2^-12
        w.scales = Tensor::zeros(DType::F8_E8M0, scale_shape);
        for (int64_t i = 0; i < s.numel(); ++i) w.scales.mutable_data<uint8_t>()[i] = uint8_t(113 + rng.bits() % 3);
      }
      break;
    }
    case Format::Int4Bf16G128:
    case Format::Int4F32G32: {
      w.format = WeightFormat::Int4Group;
      // Tiny matrices have fewer inputs than a group of 128: one group per row then.
      w.group_size = f == Format::Int4F32G32 ? 32 : std::min<int64_t>(128, cols);
      w.values = Tensor::zeros(DType::I32, {rows, cols / 8});
      for (int64_t i = 0; i < w.values.numel(); ++i) w.values.mutable_data<int32_t>()[i] = int32_t(uint32_t(rng.bits()));
      Tensor s = Tensor::zeros(DType::F32, {rows, cols / w.group_size});
      for (int64_t i = 0; i < s.numel(); ++i) s.mutable_data<float>()[i] = 0.002f + 0.004f * rng.uniform();
      w.scales = f == Format::Int4F32G32 ? s : s.cast(DType::BF16);
      break;
    }
    case Format::Mxfp4: {
      w.format = WeightFormat::Mxfp4;
      w.values = Tensor::zeros(DType::U8, {rows, cols / 2});
      for (int64_t i = 0; i < w.values.numel(); ++i) w.values.mutable_data<uint8_t>()[i] = uint8_t(rng.bits());
      w.scales = Tensor::zeros(DType::F8_E8M0, {rows, cols / 32});
      for (int64_t i = 0; i < w.scales.numel(); ++i) w.scales.mutable_data<uint8_t>()[i] = uint8_t(120 + rng.bits() % 2);
      break;
    }
  }
  w.validate(format_name(f));
  return w;
}

// ---- the rounding model of Precision::Fast (file comment) ----

// Error of one Fast GEMM of M rows over a [rows_per_group, cols] slice of a weight, by the
// path linear_ops.cu takes for it. 0: the path rounds nothing (dense f32 stays fp32).
// Weights kept as bf16 on the device run, at M <= 16, through dense_gemv with the fp32
// activations unrounded: only the weight's own rounding to bf16 remains.
double fast_gemm_error(Format f, int64_t rows_per_group, int64_t cols, int64_t groups, int64_t M) {
  const bool fp8_kernel = cols % 256 == 0 && rows_per_group % 8 == 0 && (groups == 1 || rows_per_group % 128 == 0);
  const bool int4_kernel = groups == 1 && rows_per_group % 16 == 0 && cols % 512 == 0;
  const double act = M <= 16 && cols % 8 == 0 ? 0.0 : kBf16;  // bf16 path: activations rounded?
  const auto with_act = [&](double weight) { return std::sqrt(act * act + weight * weight); };
  switch (f) {
    case Format::DenseF32: return 0.0;
    case Format::DenseBf16: return with_act(0.0);
    case Format::Mxfp4:  // mxfp4_linear.h's kernels (bf16 activations) where they fit, else bf16 at load
      return rows_per_group % 16 == 0 && cols % 512 == 0 && groups == 1 ? kBf16 : with_act(0.0);
    case Format::DenseF16:
    case Format::Int4F32G32: return with_act(kBf16);  // weights rounded to bf16
    case Format::Int4Bf16G128: return int4_kernel ? std::sqrt(2.0) * kBf16 : with_act(0.0);  // kernel: unrounded q·s
    case Format::Fp8F32:
    case Format::Fp8Bf16:
    case Format::Fp8E8m0:
      if (fp8_kernel) {  // fp8 activations, bf16 output, (bf16 scales) unrounded v·s
        const double scale_rounding = f == Format::Fp8Bf16 ? kBf16 : 0.0;
        return std::sqrt(kE4m3 * kE4m3 + kBf16 * kBf16 + scale_rounding * scale_rounding);
      }
      // bf16 path: f32-scaled v·s rounded to bf16
      return with_act(f == Format::Fp8F32 ? kBf16 : 0.0);
  }
  return 0.0;
}

// ---- comparison ----

// ‖got − want‖ / ‖want‖; fails the test (returns NaN) on a non-finite GPU value.
double relative_error(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  if (got.size() != want.size()) return NAN;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i];
      return NAN;
    }
    const double d = double(got[i]) - double(want[i]);
    diff += d * d;
    norm += double(want[i]) * double(want[i]);
  }
  EXPECT_GT(norm, 0.0) << what << ": the reference is all zero";
  return std::sqrt(diff / norm);
}

// Checks both precisions' errors of one case and prints them; `fast_model` is the
// predicted Fast error (0: exact path, held to the F32 tolerance).
void check_errors(const std::string& what, double f32_error, double fast_error, double fast_model) {
  EXPECT_LE(f32_error, kF32Tolerance) << what << " [F32]";
  if (fast_model == 0.0) {
    EXPECT_LE(fast_error, kF32Tolerance) << what << " [Fast]";
    std::printf("  %-58s F32 %.2e  Fast %.2e (fp32 path, tol %.0e)\n", what.c_str(), f32_error, fast_error,
                kF32Tolerance);
  } else {
    EXPECT_LE(fast_error, 2.0 * fast_model) << what << " [Fast] model " << fast_model;
    EXPECT_GE(fast_error, fast_model / 4.0) << what << " [Fast] model " << fast_model;
    std::printf("  %-58s F32 %.2e  Fast %.2e (model %.2e, ratio %.2f)\n", what.c_str(), f32_error, fast_error,
                fast_model, fast_error / fast_model);
  }
}

const int64_t kRowCounts[] = {1, 5, 64, 300};

// One linear (or grouped linear, groups > 1) case: the weight in one format, each M.
void check_linear(const std::string& name, Format f, int64_t rows, int64_t cols, int64_t groups, uint64_t seed,
                  const std::vector<int64_t>& row_counts = {std::begin(kRowCounts), std::end(kRowCounts)}) {
  Rng rng(seed);
  const QuantizedMatrix w = random_weight(f, rows, cols, rng);
  const int64_t in = groups * cols;
  cpu::CpuOps cpu;
  CudaOps fast(Precision::Fast), exact(Precision::F32);
  for (int64_t M : row_counts) {
    const std::string what = name + " " + format_name(f) + " M=" + std::to_string(M);
    SCOPED_TRACE(what);
    const std::vector<float> x = normals(M * in, rng);
    std::vector<float> want(size_t(M * rows));
    if (groups == 1) cpu.linear(w, x.data(), M, want.data());
    else cpu.linear_grouped(w, groups, x.data(), M, want.data());
    double errors[2];
    CudaOps* ops[2] = {&exact, &fast};
    for (int i = 0; i < 2; ++i) {
      const Tensor xg = on_gpu(*ops[i], x);
      Tensor yg = poisoned_gpu(*ops[i], M * rows);
      if (groups == 1) ops[i]->linear(w, xg.data<float>(), M, yg.mutable_data<float>());
      else ops[i]->linear_grouped(w, groups, xg.data<float>(), M, yg.mutable_data<float>());
      errors[i] = relative_error(floats_of(*ops[i], yg), want, what);
    }
    check_errors(what, errors[0], errors[1], fast_gemm_error(f, rows / groups, cols, groups, M));
  }
}

struct LinearShape {
  const char* name;
  int64_t rows, cols;
};

// Tiny shapes (the fixtures' widths; 40×96 is off the kernels' alignments) and V4-Flash's.
constexpr LinearShape kTinyLinears[] = {{"tiny 24x64", 24, 64}, {"tiny 40x96", 40, 96}, {"tiny 256x128", 256, 128}};
constexpr LinearShape kFlashLinears[] = {
    {"flash wq_a 1024x4096", 1024, 4096},
    {"flash wq_b 32768x1024", 32768, 1024},
    {"flash wkv 512x4096", 512, 4096},
    {"flash wo_b 4096x8192", 4096, 8192},
};

class CudaLinearOps : public ::testing::Test {
 protected:
  void SetUp() override { DSQ_REQUIRE_GPU(); }
};

TEST_F(CudaLinearOps, LinearTinyShapesEveryFormat) {
  uint64_t seed = 1;
  for (const LinearShape& s : kTinyLinears)
    for (Format f : kAllFormats) check_linear(s.name, f, s.rows, s.cols, 1, seed++);
}

TEST_F(CudaLinearOps, LinearFlashShapesEveryFormat) {
  uint64_t seed = 100;
  for (const LinearShape& s : kFlashLinears)
    for (Format f : kAllFormats) check_linear(s.name, f, s.rows, s.cols, 1, seed++);
}

// linear_many: the projections a V4-Flash layer takes from one input (FP8 wq_a and wkv,
// dense bf16 compressor and indexer weights, an fp32 one) in one call, against CpuOps
// running each alone. Each output is held to its own format's rounding model.
TEST_F(CudaLinearOps, LinearManySharesOneInput) {
  Rng rng(250);
  const int64_t H = 4096;
  struct Target {
    Format f;
    int64_t rows;
  };
  const Target targets[] = {{Format::Fp8E8m0, 1024}, {Format::Fp8E8m0, 512}, {Format::DenseBf16, 1024},
                            {Format::DenseBf16, 1024}, {Format::DenseBf16, 64}, {Format::DenseF32, 24}};
  std::vector<QuantizedMatrix> ws;
  for (const Target& t : targets) ws.push_back(random_weight(t.f, t.rows, H, rng));
  std::vector<const QuantizedMatrix*> wp;
  for (const QuantizedMatrix& w : ws) wp.push_back(&w);
  cpu::CpuOps cpu;
  CudaOps fast(Precision::Fast), exact(Precision::F32);
  // M = 16: the largest row count the FP8 decode kernel takes for the concatenated
  // wq_a + wkv (one launch, outputs split over the two targets).
  for (int64_t M : {int64_t(1), int64_t(5), int64_t(9), int64_t(16), int64_t(64), int64_t(300)}) {
    const std::vector<float> x = normals(M * H, rng);
    CudaOps* ops[2] = {&exact, &fast};
    std::vector<std::vector<float>> got[2];
    for (int i = 0; i < 2; ++i) {
      const Tensor xg = on_gpu(*ops[i], x);
      std::vector<Tensor> ys;
      std::vector<float*> yp;
      for (const Target& t : targets) {
        ys.push_back(poisoned_gpu(*ops[i], M * t.rows));
        yp.push_back(ys.back().mutable_data<float>());
      }
      ops[i]->linear_many(wp.data(), yp.data(), int64_t(wp.size()), xg.data<float>(), M);
      for (const Tensor& y : ys) got[i].push_back(floats_of(*ops[i], y));
    }
    for (size_t j = 0; j < ws.size(); ++j) {
      const std::string what = "linear_many target " + std::to_string(j) + " " + format_name(targets[j].f) +
                               " M=" + std::to_string(M);
      std::vector<float> want(size_t(M * targets[j].rows));
      cpu.linear(ws[j], x.data(), M, want.data());
      check_errors(what, relative_error(got[0][j], want, what), relative_error(got[1][j], want, what),
                   fast_gemm_error(targets[j].f, targets[j].rows, H, 1, M));
    }
  }
}

// V4-Flash's FP8 projections at the decode kernel's two-tile row counts (9 to 16 tokens:
// two 8-token wgmma tiles), which kRowCounts skips.
TEST_F(CudaLinearOps, LinearFp8DecodeTwoTokenTiles) {
  uint64_t seed = 240;
  for (const LinearShape& s : kFlashLinears) check_linear(s.name, Format::Fp8E8m0, s.rows, s.cols, 1, seed++, {9, 16});
  check_linear("flash wq_b 32768x1024", Format::Fp8F32, 32768, 1024, 1, seed++, {13});
}

// Odd row counts through CudaOps on the decode kernel's automatic configurations: wkv
// (16 one-step slices), wo_b (8 four-step slices) and wo_a (4 per group) in narrow
// blocks (3, 7) and wide ones (13).
TEST_F(CudaLinearOps, LinearFp8DecodeOddRows) {
  check_linear("flash wkv 512x4096", Format::Fp8F32, 512, 4096, 1, 260, {3, 7, 13});
  check_linear("flash wo_b 4096x8192", Format::Fp8E8m0, 4096, 8192, 1, 261, {3, 13});
  check_linear("flash wo_a 8x1024x4096", Format::Fp8E8m0, 8192, 4096, 8, 262, {7, 13});
}

// attn.wo_a: tiny-a (2 groups of 16 rows × 64 inputs), tiny-brown (2 × 128 × 256, where
// FP8 runs per group) and V4-Flash (8 groups of 1024 rows × 4096 inputs).
TEST_F(CudaLinearOps, LinearGroupedEveryFormat) {
  uint64_t seed = 200;
  for (Format f : kAllFormats) {
    check_linear("tiny-a wo_a 2x16x64", f, 32, 64, 2, seed++);
    check_linear("tiny-brown wo_a 2x128x256", f, 256, 256, 2, seed++);
    check_linear("flash wo_a 8x1024x4096", f, 8192, 4096, 8, seed++);
  }
}

// V4-Flash's FP8 wo_a (8 groups of [1024, 4096]) at the decode sizes the one-launch
// grouped kernel takes: M = 1, 3, 9 (the first with a second 8-token tile), 16, a ragged
// 11 and 33 (grouped weights stay on the decode kernel up to 64 rows).
TEST_F(CudaLinearOps, LinearGroupedFp8DecodeOneLaunch) {
  check_linear("flash wo_a 8x1024x4096", Format::Fp8E8m0, 8192, 4096, 8, 230, {1, 3, 9, 11, 16, 33});
  check_linear("flash wo_a 8x1024x4096", Format::Fp8F32, 8192, 4096, 8, 231, {2, 16});
}

// ---- routed experts ----

struct ExpertSet {
  std::vector<QuantizedMatrix> gate, up, down;
  std::vector<backend::ExpertLinears> linears;

  ExpertSet(Format f, int64_t E, int64_t H, int64_t F, Rng& rng) {
    for (int64_t e = 0; e < E; ++e) {
      gate.push_back(random_weight(f, F, H, rng));
      up.push_back(random_weight(f, F, H, rng));
      down.push_back(random_weight(f, H, F, rng));
    }
    for (int64_t e = 0; e < E; ++e) linears.push_back({&gate[size_t(e)], &up[size_t(e)], &down[size_t(e)]});
  }
};

// Ragged routing: each token picks k distinct experts among the first E − 2 with
// probability ∝ 1/(e + 1) (the last two experts never get a token; with few tokens many
// more are empty), weights in [0.1, 1).
void random_routing(int64_t T, int64_t E, int64_t k, Rng& rng, std::vector<int64_t>& chosen,
                    std::vector<float>& weights) {
  chosen.assign(size_t(T * k), -1);
  weights.resize(size_t(T * k));
  double total = 0;
  for (int64_t e = 0; e < E - 2; ++e) total += 1.0 / double(e + 1);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = 0;
      do {
        double u = rng.uniform() * total;
        for (e = 0; e < E - 3 && u >= 1.0 / double(e + 1); ++e) u -= 1.0 / double(e + 1);
      } while (std::find(chosen.begin() + t * k, chosen.begin() + t * k + j, e) != chosen.begin() + t * k + j);
      chosen[size_t(t * k + j)] = e;
      weights[size_t(t * k + j)] = 0.1f + 0.9f * rng.uniform();
    }
}

// Predicted Fast error of the expert output (file comment): gate/up errors through
// SwiGLU (×√2), plus the down projection's own. The per-expert loop always runs GEMMs
// (bf16 activations), whatever its row count: kMoeRows stands for "many rows".
constexpr int64_t kMoeRows = 1 << 20;
double fast_expert_error(Format f, int64_t H, int64_t F) {
  const bool int4_stacked = f == Format::Int4Bf16G128 && H % 512 == 0 && F % 512 == 0;
  const double gate_up = int4_stacked ? std::sqrt(2.0) * kBf16 : fast_gemm_error(f, F, H, 1, kMoeRows);
  const double down = int4_stacked ? std::sqrt(2.0) * kBf16 : fast_gemm_error(f, H, F, 1, kMoeRows);
  return std::sqrt(2.0 * gate_up * gate_up + down * down);
}

constexpr float kSwigluLimit = 10.0f;

void check_moe(const std::string& name, Format f, int64_t E, int64_t H, int64_t F, int64_t k, uint64_t seed) {
  Rng rng(seed);
  const ExpertSet experts(f, E, H, F, rng);
  cpu::CpuOps cpu;
  CudaOps fast(Precision::Fast), exact(Precision::F32);
  for (int64_t T : kRowCounts) {
    const std::string what = name + " " + format_name(f) + " T=" + std::to_string(T);
    SCOPED_TRACE(what);
    const std::vector<float> x = normals(T * H, rng);
    std::vector<int64_t> chosen;
    std::vector<float> weights;
    random_routing(T, E, k, rng, chosen, weights);
    std::vector<float> want(size_t(T * H));
    cpu.moe_experts(x.data(), T, H, experts.linears.data(), E, chosen.data(), weights.data(), k, kSwigluLimit,
                    want.data(), nullptr);
    double errors[2];
    CudaOps* ops[2] = {&exact, &fast};
    for (int i = 0; i < 2; ++i) {
      const Tensor xg = on_gpu(*ops[i], x), cg = on_gpu(*ops[i], chosen), wg = on_gpu(*ops[i], weights);
      Tensor out = poisoned_gpu(*ops[i], T * H);
      ops[i]->moe_experts(xg.data<float>(), T, H, experts.linears.data(), E, cg.data<int64_t>(), wg.data<float>(), k,
                          kSwigluLimit, out.mutable_data<float>(), nullptr);
      errors[i] = relative_error(floats_of(*ops[i], out), want, what);
    }
    check_errors(what, errors[0], errors[1], fast_expert_error(f, H, F));
  }
}

constexpr Format kExpertFormats[] = {Format::DenseBf16, Format::Fp8E8m0, Format::Int4Bf16G128, Format::Mxfp4};

// tiny-a's experts (8 of 64 → 32 → 64, k = 2): the per-expert path in every format.
TEST_F(CudaLinearOps, MoeTinyEveryExpertFormat) {
  uint64_t seed = 300;
  for (Format f : kAllFormats) check_moe("tiny-a experts E=8 k=2", f, 8, 64, 32, 2, seed++);
}

// V4-Flash experts (4096 → 2048 → 4096, k = 6): INT4 through the stacked grouped kernels
// (16 experts; T = 300 gives experts over 64 rows, the many-row path), the other formats
// per expert (10 experts: their host-side preparation is what takes the time).
TEST_F(CudaLinearOps, MoeFlashShapes) {
  uint64_t seed = 400;
  for (Format f : kExpertFormats) {
    const int64_t E = f == Format::Int4Bf16G128 ? 16 : 10;
    check_moe("flash experts E=" + std::to_string(E) + " k=6", f, E, 4096, 2048, 6, seed++);
  }
}

// ---- routed experts in decode: expert ids stay on the device ----

// Each token picks k distinct experts among the `pool` experts E − pool … E − 1 (high
// ids; with pool < 2k tokens share most experts), weights in [0.1, 1).
void pooled_routing(int64_t T, int64_t E, int64_t k, int64_t pool, Rng& rng, std::vector<int64_t>& chosen,
                    std::vector<float>& weights) {
  chosen.assign(size_t(T * k), -1);
  weights.resize(size_t(T * k));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = 0;
      do e = E - pool + int64_t(rng.bits() % uint64_t(pool));
      while (std::find(chosen.begin() + t * k, chosen.begin() + t * k + j, e) != chosen.begin() + t * k + j);
      chosen[size_t(t * k + j)] = e;
      weights[size_t(t * k + j)] = 0.1f + 0.9f * rng.uniform();
    }
}

// V4-Flash experts (4096 → 2048 → 4096, INT4, k = 6) at T·k <= 64, the device-id decode
// path (int4_moe_decode.h): T = 1, 2, 5 and 10 (10: 60 pairs, the largest at k = 6) from
// pools of 7–12 experts, so tokens share experts; with a pool of 7 at T = 10 an expert
// gets more than 8 rows, i.e. two 8-row tiles. Each case with the default K slice and
// each forced one (256, 512, 1024 inputs; they concern the several-token kernel, T = 1
// runs the single-token one whatever is forced). Fast only (F32 runs the per-expert GEMMs,
// checked above), same rounding model; a second call must give identical bits (K slices
// add in a fixed order, no atomics).
TEST_F(CudaLinearOps, MoeDecodeDeviceIdsFlashShapes) {
  struct Case {
    int64_t E, T, pool;
  };
  const Case cases[] = {{16, 1, 8}, {16, 2, 7}, {32, 1, 12}, {32, 2, 8}, {32, 5, 8}, {32, 10, 7}};
  const int64_t H = 4096, F = 2048, k = 6;
  Rng rng(700);
  cpu::CpuOps cpu;
  CudaOps fast(Precision::Fast);
  const ExpertSet experts32(Format::Int4Bf16G128, 32, H, F, rng);
  const ExpertSet experts16(Format::Int4Bf16G128, 16, H, F, rng);
  for (const Case& c : cases) {
    const ExpertSet& experts = c.E == 32 ? experts32 : experts16;
    const std::string what = "flash experts E=" + std::to_string(c.E) + " k=6 T=" + std::to_string(c.T) +
                             " pool " + std::to_string(c.pool) + " (device ids)";
    SCOPED_TRACE(what);
    const std::vector<float> x = normals(c.T * H, rng);
    std::vector<int64_t> chosen;
    std::vector<float> weights;
    pooled_routing(c.T, c.E, k, c.pool, rng, chosen, weights);
    std::vector<float> want(size_t(c.T * H));
    cpu.moe_experts(x.data(), c.T, H, experts.linears.data(), c.E, chosen.data(), weights.data(), k, kSwigluLimit,
                    want.data(), nullptr);
    const Tensor xg = on_gpu(fast, x), cg = on_gpu(fast, chosen), wg = on_gpu(fast, weights);
    for (int chunks : {0, 4, 8, 16}) {
      const std::string run = what + (chunks ? " slice " + std::to_string(64 * chunks) : " default");
      cuda::int4_moe_decode_force_chunks(chunks);
      std::vector<float> got[2];
      for (auto& g : got) {
        Tensor out = poisoned_gpu(fast, c.T * H);
        fast.moe_experts(xg.data<float>(), c.T, H, experts.linears.data(), c.E, cg.data<int64_t>(),
                         wg.data<float>(), k, kSwigluLimit, out.mutable_data<float>(), nullptr);
        g = floats_of(fast, out);
      }
      const double model = fast_expert_error(Format::Int4Bf16G128, H, F), error = relative_error(got[0], want, run);
      EXPECT_LE(error, 2.0 * model) << run;
      EXPECT_GE(error, model / 4.0) << run;
      EXPECT_TRUE(got[0] == got[1]) << run << ": two calls differ";
      std::printf("  %-66s Fast %.2e (model %.2e, ratio %.2f)\n", run.c_str(), error, model, error / model);
    }
    cuda::int4_moe_decode_force_chunks(0);
  }
}

// The device-id path cannot throw on an expert id outside [0, E) (no synchronisation): the
// token with such an id gets a NaN row, the other tokens their normal output.
TEST_F(CudaLinearOps, MoeDecodeMarksBadExpertIdsWithNaN) {
  Rng rng(800);
  const int64_t E = 4, H = 512, F = 512, T = 3, k = 2;
  const ExpertSet experts(Format::Int4Bf16G128, E, H, F, rng);
  const std::vector<float> x = normals(T * H, rng);
  const std::vector<float> weights = {0.5f, 0.25f, 0.75f, 0.5f, 1.0f, 0.125f};
  const std::vector<int64_t> valid = {0, 3, 2, 1, 3, 0}, bad = {0, 3, 2, 9, 3, 0};
  std::vector<float> want(size_t(T * H));
  cpu::CpuOps().moe_experts(x.data(), T, H, experts.linears.data(), E, valid.data(), weights.data(), k, kSwigluLimit,
                            want.data(), nullptr);
  CudaOps fast(Precision::Fast);
  const Tensor xg = on_gpu(fast, x), cg = on_gpu(fast, bad), wg = on_gpu(fast, weights);
  Tensor out = poisoned_gpu(fast, T * H);
  fast.moe_experts(xg.data<float>(), T, H, experts.linears.data(), E, cg.data<int64_t>(), wg.data<float>(), k,
                   kSwigluLimit, out.mutable_data<float>(), nullptr);
  const std::vector<float> got = floats_of(fast, out);
  for (int64_t c = 0; c < H; ++c) EXPECT_TRUE(std::isnan(got[size_t(H + c)])) << "token 1, column " << c;
  const double model = fast_expert_error(Format::Int4Bf16G128, H, F);
  for (int64_t t : {0, 2}) {
    const std::vector<float> row_got(got.begin() + t * H, got.begin() + (t + 1) * H);
    const std::vector<float> row_want(want.begin() + t * H, want.begin() + (t + 1) * H);
    EXPECT_LE(relative_error(row_got, row_want, "token " + std::to_string(t)), 2.0 * model) << "token " << t;
  }
}

// One token whose slots repeat an expert (a hash table may): the single-token kernels
// give each slot its own tile, so the repeated expert is computed once per slot, and the
// result must equal the CPU's. Also a bad id at one token: that token's row is NaN; and
// a good call after it (the down kernel's tile counters, which a bad slot's blocks must
// still count, are back at zero). H = 512: the 128-wide K slices of the single-token
// kernels.
TEST_F(CudaLinearOps, MoeDecodeOneTokenWithRepeatedExperts) {
  Rng rng(810);
  const int64_t E = 4, H = 512, F = 512, k = 4;
  const ExpertSet experts(Format::Int4Bf16G128, E, H, F, rng);
  const std::vector<float> x = normals(H, rng);
  const std::vector<float> weights = {0.5f, 0.25f, 0.75f, 0.125f};
  const std::vector<int64_t> repeated = {2, 2, 0, 2};
  std::vector<float> want(static_cast<size_t>(H));
  cpu::CpuOps().moe_experts(x.data(), 1, H, experts.linears.data(), E, repeated.data(), weights.data(), k,
                            kSwigluLimit, want.data(), nullptr);
  CudaOps fast(Precision::Fast);
  const Tensor xg = on_gpu(fast, x), wg = on_gpu(fast, weights);
  for (const bool bad : {false, true, false}) {
    std::vector<int64_t> ids = repeated;
    if (bad) ids[1] = E;
    const Tensor cg = on_gpu(fast, ids);
    Tensor out = poisoned_gpu(fast, H);
    fast.moe_experts(xg.data<float>(), 1, H, experts.linears.data(), E, cg.data<int64_t>(), wg.data<float>(), k,
                     kSwigluLimit, out.mutable_data<float>(), nullptr);
    const std::vector<float> got = floats_of(fast, out);
    if (bad) {
      for (int64_t c = 0; c < H; ++c) EXPECT_TRUE(std::isnan(got[size_t(c)])) << "column " << c;
    } else {
      EXPECT_LE(relative_error(got, want, "repeated experts"), 2.0 * fast_expert_error(Format::Int4Bf16G128, H, F));
    }
  }
}

// ---- contracts: no-ops and clear errors ----

TEST_F(CudaLinearOps, MoeRefusesBadInputsWithClearErrors) {
  Rng rng(500);
  ExpertSet experts(Format::DenseBf16, 4, 64, 32, rng);
  CudaOps ops(Precision::Fast);
  const Tensor xg = on_gpu(ops, normals(3 * 64, rng));
  const Tensor wg = on_gpu(ops, std::vector<float>(6, 0.5f));
  const Tensor good = on_gpu(ops, std::vector<int64_t>{0, 1, 2, 3, 1, 0});
  Tensor out = poisoned_gpu(ops, 3 * 64);
  float* y = out.mutable_data<float>();

  // T = 0 is a no-op (no pointer is touched).
  EXPECT_NO_THROW(ops.moe_experts(nullptr, 0, 64, experts.linears.data(), 4, nullptr, nullptr, 2, kSwigluLimit,
                                  nullptr, nullptr));
  // A tap is a CPU feature.
  struct NullTap : backend::ExpertInputTap {
    void on_expert_input(int64_t, int, const float*, int64_t, int64_t) override {}
  } tap;
  EXPECT_THROW(ops.moe_experts(xg.data<float>(), 3, 64, experts.linears.data(), 4, good.data<int64_t>(),
                               wg.data<float>(), 2, kSwigluLimit, y, &tap),
               Error);
  // An expert id outside [0, E).
  const Tensor bad = on_gpu(ops, std::vector<int64_t>{0, 1, 2, 7, 1, 0});
  try {
    ops.moe_experts(xg.data<float>(), 3, 64, experts.linears.data(), 4, bad.data<int64_t>(), wg.data<float>(), 2,
                    kSwigluLimit, y, nullptr);
    ADD_FAILURE() << "an expert id out of range was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside [0, 4)"), std::string::npos) << e.what();
  }
  // A weight of the wrong shape is named with its shape.
  experts.up[2] = random_weight(Format::DenseBf16, 32, 48, rng);
  try {
    ops.moe_experts(xg.data<float>(), 3, 64, experts.linears.data(), 4, good.data<int64_t>(), wg.data<float>(), 2,
                    kSwigluLimit, y, nullptr);
    ADD_FAILURE() << "a mis-shaped expert weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert 2 up is a dense weight [32, 48], expected [32, 64]"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(CudaLinearOps, GroupedRefusesRowsThatDoNotSplit) {
  Rng rng(600);
  const QuantizedMatrix w = random_weight(Format::DenseBf16, 30, 64, rng);
  CudaOps ops(Precision::Fast);
  const Tensor x = on_gpu(ops, normals(4 * 64, rng));
  Tensor y = poisoned_gpu(ops, 30);
  try {
    ops.linear_grouped(w, 4, x.data<float>(), 1, y.mutable_data<float>());
    ADD_FAILURE() << "30 rows were split into 4 groups";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[30, 64]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsq::test
