// Table-driven GPU-vs-CPU harness for the CUDA linear ops (style.md §9 rule 3).
//
// Each op is one struct: its list of shapes, make_inputs() drawing random non-zero data,
// run_ref_cpu() computing the exact function in double from the stored formats, run_gpu()
// whose output buffer is poisoned with NaN first (so an unwritten element fails), and a
// tolerance() with its justification. The metric for GEMMs is the normalized squared
// error ||y - ref||² / ||ref||²; any NaN fails. Layout ops (the int4 dequantize) compare
// bitwise. The CPU references dequantize from the documented checkpoint layouts
// (formats/quantized_matrix.h) here in the test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/bf16_linear.h"
#include "backend/cuda/fp8_block_linear.h"
#include "backend/cuda/gpu_context.h"
#include "backend/cuda/int4_linear.h"
#include "core/dtype.h"

namespace dsq::cuda {
namespace {

struct Dims {
  int64_t M, N, K;
  std::vector<int64_t> expert_rows = {};  // grouped ops: rows per expert (M = their sum)
};

std::string dims_string(const Dims& d) {
  std::string s = "M=" + std::to_string(d.M) + " N=" + std::to_string(d.N) + " K=" + std::to_string(d.K);
  if (!d.expert_rows.empty()) {
    s += " rows/expert=";
    for (int64_t r : d.expert_rows) s += std::to_string(r) + ",";
  }
  return s;
}

// ---- random data ----

std::vector<uint16_t> random_bf16(size_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<uint16_t> out(n);
  for (auto& v : out) {
    float f = dist(rng);
    if (std::fabs(f) < 1e-3f) f = 1e-3f;  // non-zero everywhere
    v = f32_to_bf16(f);
  }
  return out;
}

template <typename T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> b(n);
  DSQ_CUDA_CHECK(cudaMemset(b.get(), 0xFF, b.bytes()));  // all-ones: NaN in bf16 and fp32
  // The ops run on a non-blocking stream, which does not wait for the default stream.
  DSQ_CUDA_CHECK(cudaDeviceSynchronize());
  return b;
}

std::vector<float> widen_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = dsq::bf16_to_f32(v[i]);
  return out;
}

// ref[M,N] = x[M,K] · w[N,K]^T in double.
std::vector<double> matmul_ref(const std::vector<float>& x, const std::vector<float>& w, int64_t M,
                               int64_t N, int64_t K) {
  std::vector<double> y(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      const float* xr = &x[size_t(m * K)];
      const float* wr = &w[size_t(n * K)];
      for (int64_t k = 0; k < K; ++k) s += double(xr[k]) * double(wr[k]);
      y[size_t(m * N + n)] = s;
    }
  return y;
}

// ---- the op interface ----

class LinearOpTest {
 public:
  virtual ~LinearOpTest() = default;
  virtual std::vector<Dims> shapes() const = 0;
  virtual void make_inputs(const Dims& d, std::mt19937& rng) = 0;
  virtual std::vector<double> run_ref_cpu() = 0;
  // Output as f32 [M, N], read back after the run.
  virtual std::vector<float> run_gpu(GpuContext& ctx) = 0;
  // Upper bound on the normalized squared error.
  virtual double tolerance() const = 0;
};

// Normalized squared error; NaN when any output is NaN.
double nmse(const std::vector<double>& ref, const std::vector<float>& got) {
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double diff = double(got[i]) - ref[i];
    err += diff * diff;
    norm += ref[i] * ref[i];
  }
  return err / norm;
}

void check_op(LinearOpTest& op, uint32_t seed) {
  GpuContext ctx;
  for (const Dims& d : op.shapes()) {
    SCOPED_TRACE(dims_string(d));
    std::mt19937 rng(seed++);
    op.make_inputs(d, rng);
    const std::vector<double> ref = op.run_ref_cpu();
    const std::vector<float> got = op.run_gpu(ctx);
    ASSERT_EQ(got.size(), ref.size());
    double err = 0.0, norm = 0.0;
    size_t nans = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::isnan(got[i])) ++nans;
      const double diff = double(got[i]) - ref[i];
      err += diff * diff;
      norm += ref[i] * ref[i];
    }
    ASSERT_EQ(nans, 0u) << "NaN (unwritten or poisoned) outputs";
    ASSERT_GT(norm, 0.0);
    const double nmse = err / norm;
    EXPECT_LE(nmse, op.tolerance()) << "normalized squared error " << nmse;
    std::printf("  %-40s nmse %.3g (tolerance %.1g)\n", dims_string(d).c_str(), nmse, op.tolerance());
  }
}

class CudaLinear : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_available()) {
      std::printf("no GPU: skipping CUDA tests\n");
      GTEST_SKIP();
    }
  }
};

// ---- BF16 dense (cuBLAS) ----

class Bf16LinearTest : public LinearOpTest {
 public:
  std::vector<Dims> shapes() const override {
    return {{1, 256, 512}, {7, 4096, 1024}, {64, 2048, 4096}, {300, 136, 1024}};
  }
  void make_inputs(const Dims& d, std::mt19937& rng) override {
    d_ = d;
    x_ = random_bf16(size_t(d.M * d.K), rng);
    w_ = random_bf16(size_t(d.N * d.K), rng, 0.05f);
  }
  std::vector<double> run_ref_cpu() override { return matmul_ref(widen_bf16(x_), widen_bf16(w_), d_.M, d_.N, d_.K); }
  std::vector<float> run_gpu(GpuContext& ctx) override {
    auto x = DeviceBuffer<uint16_t>::from_host(x_);
    auto w = DeviceBuffer<uint16_t>::from_host(w_);
    auto y = poisoned<uint16_t>(size_t(d_.M * d_.N));
    bf16_linear(ctx, reinterpret_cast<const __nv_bfloat16*>(x.get()),
                reinterpret_cast<const __nv_bfloat16*>(w.get()), reinterpret_cast<__nv_bfloat16*>(y.get()),
                d_.M, d_.N, d_.K);
    ctx.synchronize();
    return widen_bf16(y.to_host());
  }
  // Inputs are exact in both; fp32 accumulation is ~1e-7 relative; the bf16 output rounds
  // each element by at most 2^-9 relative, so NMSE <= 2^-18 ≈ 4e-6.
  double tolerance() const override { return 1e-5; }

 private:
  Dims d_{};
  std::vector<uint16_t> x_, w_;
};

TEST_F(CudaLinear, Bf16Dense) {
  Bf16LinearTest op;
  check_op(op, 100);
}

// ---- FP8 block-scaled (cuBLASLt, and the fallback kernel) ----

// The activation quantization, as the GPU does it: scale = amax/448, code = e4m3(v * (1/scale)).
void quantize_act_ref(const std::vector<float>& x, int64_t M, int64_t K, std::vector<float>& deq) {
  deq.resize(x.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t kb = 0; kb < K / 128; ++kb) {
      const float* v = &x[size_t(m * K + kb * 128)];
      float amax = 0.0f;
      for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
      const float inv = 1.0f / scale;
      for (int i = 0; i < 128; ++i)
        deq[size_t(m * K + kb * 128 + i)] = f8e4m3_to_f32(f32_to_f8e4m3(v[i] * inv)) * scale;
    }
}

const char* path_name(Fp8Path p) {
  switch (p) {
    case Fp8Path::Decode: return "decode kernel";
    case Fp8Path::CublasLt: return "cuBLASLt block-scaled";
    case Fp8Path::Fallback: return "fallback kernel";
    case Fp8Path::Auto: break;
  }
  return "auto";
}

class Fp8BlockLinearTest : public LinearOpTest {
 public:
  explicit Fp8BlockLinearTest(Fp8Path path) : path_(path) {}
  void set_scale_orders(ScaleOrder act, ScaleOrder weight) {
    act_order_ = act;
    weight_order_ = weight;
    orders_set_ = true;
  }
  // Forces the decode kernel's steps per block (0: automatic) and these shapes.
  void set_decode_steps(int steps, std::vector<Dims> shapes) {
    decode_steps_ = steps;
    shapes_ = std::move(shapes);
  }
  // Forces the decode kernel's column blocks per thread block and split-K sum.
  void set_decode_variant(int width, Fp8SplitSum sum) {
    decode_width_ = width;
    decode_sum_ = sum;
  }
  // A grouped weight: N rows in `groups` groups, group g reading x columns g·K.. of
  // x[M, groups·K]; with these shapes.
  void set_groups(int64_t groups, std::vector<Dims> shapes) {
    groups_ = groups;
    shapes_ = std::move(shapes);
  }
  std::vector<Dims> shapes() const override {
    if (!shapes_.empty()) return shapes_;
    switch (path_) {
      case Fp8Path::Decode:
        // K = 2304: an odd number (9) of 256-wide slices.
        return {{1, 1024, 4096}, {2, 512, 4096}, {5, 144, 512}, {16, 4096, 8192}, {33, 1024, 1024},
                {64, 512, 4096}, {3, 256, 2304}, {40, 144, 2304}, {1, 4096, 8192}};
      case Fp8Path::Fallback:
        // [256, 256] and [128, 256]: quantized tiny-brown's wo_b and wq_a at 37 rows, which
        // run here since K < 512 never goes to cuBLASLt (it got [256, 256] wrong).
        return {{5, 136, 512}, {33, 256, 1024}, {37, 256, 256}, {37, 128, 256}};
      default:  // M = 1 and 5 have no cuBLASLt algorithm on an H100: they run padded.
        return {{1, 1024, 4096}, {5, 512, 512}, {64, 512, 4096}, {200, 1024, 1024}, {256, 1024, 2048}};
    }
  }
  void make_inputs(const Dims& d, std::mt19937& rng) override {
    d_ = d;
    x_ = random_bf16(size_t(d.M * d.K * groups_), rng);
    std::normal_distribution<float> wd(0.0f, 100.0f);
    w_.resize(size_t(d.N * d.K));
    for (auto& b : w_) {
      b = f32_to_f8e4m3(wd(rng));
      if ((b & 0x7f) == 0) b = 0x38;  // non-zero (1.0)
    }
    std::uniform_real_distribution<float> sd(2e-4f, 8e-4f);
    scales_.resize(size_t(((d.N + 127) / 128) * (d.K / 128)));
    for (auto& s : scales_) s = sd(rng);
  }
  std::vector<double> run_ref_cpu() override {
    const int64_t XW = groups_ * d_.K, R = d_.N / groups_;
    std::vector<float> xd;
    quantize_act_ref(widen_bf16(x_), d_.M, XW, xd);
    std::vector<float> wd(w_.size());
    const int64_t kb = d_.K / 128;
    for (int64_t n = 0; n < d_.N; ++n)
      for (int64_t k = 0; k < d_.K; ++k)
        wd[size_t(n * d_.K + k)] = f8e4m3_to_f32(w_[size_t(n * d_.K + k)]) * scales_[size_t((n / 128) * kb + k / 128)];
    if (groups_ == 1) return matmul_ref(xd, wd, d_.M, d_.N, d_.K);
    // Group g: its x columns times its rows, written at columns g·R.
    std::vector<double> y(size_t(d_.M * d_.N));
    for (int64_t g = 0; g < groups_; ++g) {
      std::vector<float> xg(size_t(d_.M * d_.K));
      for (int64_t m = 0; m < d_.M; ++m)
        std::copy_n(&xd[size_t(m * XW + g * d_.K)], d_.K, &xg[size_t(m * d_.K)]);
      const std::vector<float> wg(wd.begin() + g * R * d_.K, wd.begin() + (g + 1) * R * d_.K);
      const std::vector<double> yg = matmul_ref(xg, wg, d_.M, R, d_.K);
      for (int64_t m = 0; m < d_.M; ++m) std::copy_n(&yg[size_t(m * R)], R, &y[size_t(m * d_.N + g * R)]);
    }
    return y;
  }
  std::vector<float> run_gpu(GpuContext& ctx) override {
    Fp8BlockLinear lin(w_.data(), scales_.data(), d_.N, d_.K, "test.fp8", groups_);
    lin.set_path(path_);
    lin.set_decode_steps(decode_steps_);
    lin.set_decode_width(decode_width_);
    lin.set_decode_sum(decode_sum_);
    if (orders_set_) lin.set_scale_orders(act_order_, weight_order_);
    auto x = DeviceBuffer<uint16_t>::from_host(x_);
    DeviceBuffer<unsigned char> ws(lin.workspace_bytes(d_.M));
    DSQ_CUDA_CHECK(cudaMemset(ws.get(), 0, ws.bytes()));
    auto y = poisoned<uint16_t>(size_t(d_.M * d_.N));
    // Twice on one workspace: the second result proves the first run left it clean.
    for (int run = 0; run < 2; ++run)
      lin.run(ctx, reinterpret_cast<const __nv_bfloat16*>(x.get()), d_.M,
              reinterpret_cast<__nv_bfloat16*>(y.get()), ws.get());
    ctx.synchronize();
    std::printf("  [%s]\n", path_name(lin.last_path()));
    EXPECT_EQ(lin.last_path(), path_) << "ran " << path_name(lin.last_path()) << " instead";
    return widen_bf16(y.to_host());
  }
  // The reference quantizes x exactly as the GPU does, so the only differences are fp32
  // summation order inside the GEMM (~1e-7), Hopper's FP8 accumulator precision between
  // fp32 promotions (~2^-13 relative per partial sum), rare rounding-tie flips of a code,
  // and the bf16 output rounding (NMSE <= 4e-6).
  double tolerance() const override { return 2e-5; }

 private:
  Fp8Path path_;
  ScaleOrder act_order_ = ScaleOrder::OuterMajor, weight_order_ = ScaleOrder::KMajor;
  bool orders_set_ = false;
  int decode_steps_ = 0;
  int decode_width_ = 0;
  Fp8SplitSum decode_sum_ = Fp8SplitSum::Atomics;
  int64_t groups_ = 1;
  std::vector<Dims> shapes_;
  Dims d_{};
  std::vector<uint16_t> x_;
  std::vector<uint8_t> w_;
  std::vector<float> scales_;
};

TEST_F(CudaLinear, Fp8BlockDecodeKernel) {
  Fp8BlockLinearTest op(Fp8Path::Decode);
  check_op(op, 250);
}

// 1, 2 and 4 steps of 256 inputs per block: split K with the workspace, or (K = 1024 in
// 4 steps) one slice storing y directly.
TEST_F(CudaLinear, Fp8BlockDecodeSteps) {
  for (int steps : {1, 2, 4}) {
    SCOPED_TRACE("steps " + std::to_string(steps));
    Fp8BlockLinearTest op(Fp8Path::Decode);
    op.set_decode_steps(steps, {{1, 1024, 4096}, {8, 256, 1024}, {5, 144, 2048}});
    check_op(op, 270);
  }
}

// M = 9..16 (two 8-token tiles) with 2 and 4 steps: the rows V4-Flash's wq_b / wo_b
// now take through the decode kernel up to M = 16.
TEST_F(CudaLinear, Fp8BlockDecodeSixteenRows) {
  for (int steps : {2, 4}) {
    SCOPED_TRACE("steps " + std::to_string(steps));
    Fp8BlockLinearTest op(Fp8Path::Decode);
    op.set_decode_steps(steps, {{16, 1024, 4096}, {9, 256, 1024}, {13, 144, 2048}});
    check_op(op, 280);
  }
}

// Wide blocks (two 128-row column blocks sharing one quantization) and narrow ones, each
// summing split K by atomics or in a cluster: 4 steps at M = 1, 9, 13, 16 on N = 144
// (a wide block with 112 idle rows) and 384 (a half-idle second wide block), 2-8 slices,
// and grouped weights (8 groups of 256 rows); cluster sums with 1 and 2 steps (8 slices;
// 2 steps issue both before the wait).
TEST_F(CudaLinear, Fp8BlockDecodeWideAndClusterSums) {
  for (int width : {1, 2})
    for (Fp8SplitSum sum : {Fp8SplitSum::Atomics, Fp8SplitSum::Cluster}) {
      SCOPED_TRACE("width " + std::to_string(width) + (sum == Fp8SplitSum::Cluster ? " cluster" : " atomics"));
      Fp8BlockLinearTest op(Fp8Path::Decode);
      op.set_decode_steps(4, {{1, 1024, 4096}, {9, 384, 8192}, {16, 1024, 8192}, {13, 144, 2048}, {1, 144, 2048}});
      op.set_decode_variant(width, sum);
      check_op(op, 310);
      Fp8BlockLinearTest grouped(Fp8Path::Decode);
      const std::vector<Dims> grouped_shapes = {{1, 2048, 4096}, {16, 2048, 4096}, {11, 2048, 2048}};
      grouped.set_groups(8, grouped_shapes);
      grouped.set_decode_steps(4, grouped_shapes);
      grouped.set_decode_variant(width, sum);
      check_op(grouped, 320);
    }
  for (int steps : {1, 2}) {
    SCOPED_TRACE("cluster, steps " + std::to_string(steps));
    Fp8BlockLinearTest op(Fp8Path::Decode);
    op.set_decode_steps(steps, {{1, 1536, 4096 / (2 / steps)}, {16, 512, 2048 * steps}, {7, 144, 2048 * steps}});
    op.set_decode_variant(1, Fp8SplitSum::Cluster);
    check_op(op, 330);
  }
}

// A grouped weight (V4-Flash's wo_a: 8 groups of [1024, 4096]) in one call: the decode
// kernel (one launch, each block in its group) at M = 1, 3, 16 and a ragged 11, then
// cuBLASLt and the fallback kernel (one GEMM per group on codes quantized once).
TEST_F(CudaLinear, Fp8BlockGroupedOneCall) {
  {
    Fp8BlockLinearTest op(Fp8Path::Decode);
    op.set_groups(8, {{1, 8192, 4096}, {3, 8192, 4096}, {16, 8192, 4096}, {11, 1024, 1024}});
    check_op(op, 290);
  }
  {
    Fp8BlockLinearTest op(Fp8Path::CublasLt);
    op.set_groups(2, {{200, 2048, 1024}, {37, 256, 512}});
    check_op(op, 295);
  }
  {
    Fp8BlockLinearTest op(Fp8Path::Fallback);
    op.set_groups(2, {{37, 256, 256}});
    check_op(op, 297);
  }
}

TEST_F(CudaLinear, Fp8BlockCublasLt) {
  Fp8BlockLinearTest op(Fp8Path::CublasLt);
  check_op(op, 200);
}

TEST_F(CudaLinear, Fp8BlockFallbackKernel) {
  Fp8BlockLinearTest op(Fp8Path::Fallback);
  check_op(op, 300);
}

// cuBLASLt's scale-tensor order is checked, not assumed: every combination is run and
// reported, and the one Fp8BlockLinear uses by default must reproduce the reference while
// a swapped one must not (so the check can tell orders apart at all).
TEST_F(CudaLinear, Fp8ScaleOrderIsTheDefault) {
  GpuContext ctx;
  const ScaleOrder orders[2] = {ScaleOrder::KMajor, ScaleOrder::OuterMajor};
  const char* names[2] = {"k-major", "outer-major"};
  double default_nmse = -1.0, swapped_nmse = -1.0;
  for (int a = 0; a < 2; ++a)
    for (int w = 0; w < 2; ++w) {
      Fp8BlockLinearTest op(Fp8Path::CublasLt);
      op.set_scale_orders(orders[a], orders[w]);
      std::mt19937 rng(400);
      op.make_inputs({8, 256, 512}, rng);
      double e = -1.0;  // stays negative where the combination is refused
      try {
        e = nmse(op.run_ref_cpu(), op.run_gpu(ctx));
      } catch (const dsq::Error& err) {
        std::printf("  refused: %s\n", err.what());
      }
      std::printf("  activation scales %-11s weight scales %-11s nmse %.3g\n", names[a], names[w], e);
      if (orders[a] == ScaleOrder::OuterMajor && orders[w] == ScaleOrder::KMajor) default_nmse = e;
      if (orders[a] == ScaleOrder::KMajor && orders[w] == ScaleOrder::OuterMajor) swapped_nmse = e;
    }
  EXPECT_GE(default_nmse, 0.0);
  EXPECT_LE(default_nmse, 2e-5);
  EXPECT_GT(swapped_nmse, 1e-3);
}

// ---- INT4 W4A16 group 128 (tensor-core decode kernel, dequantize + cuBLAS prefill) ----

// E experts of random compressed-tensors int4 weights: packed int32 [E][N][K/8] (nibble i
// of a word = input 8w+i, stored as q + 8) and bf16 scales [E][N][K/128].
struct Int4Experts {
  int64_t E = 0, N = 0, K = 0;
  std::vector<int32_t> packed;
  std::vector<uint16_t> scales;

  void randomize(int64_t e, int64_t n, int64_t k, std::mt19937& rng) {
    E = e, N = n, K = k;
    std::uniform_int_distribution<int> q(-8, 7);
    packed.assign(size_t(E * N * K / 8), 0);
    for (auto& w : packed) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) word |= uint32_t(q(rng) + 8) << (4 * i);
      w = int32_t(word);
    }
    std::uniform_real_distribution<float> sd(0.005f, 0.02f);
    scales.resize(size_t(E * N * K / 128));
    for (auto& s : scales) s = f32_to_bf16(sd(rng));
  }
  // Expert e dequantized as the checkpoint defines it: bf16(q * s), returned as f32 (or,
  // with exact_products, the fp32 product q * s the decode kernel uses).
  std::vector<float> dequantize(int64_t e, bool exact_products = false) const {
    std::vector<float> w(size_t(N * K));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const uint32_t word = uint32_t(packed[size_t((e * N + n) * (K / 8) + k / 8)]);
        const int qv = int((word >> (4 * (k % 8))) & 0xF) - 8;
        const float s = bf16_to_f32(scales[size_t((e * N + n) * (K / 128) + k / 128)]);
        const float product = float(qv) * s;
        w[size_t(n * K + k)] = exact_products ? product : bf16_to_f32(f32_to_bf16(product));
      }
    return w;
  }
  Int4ExpertWeights upload() const {
    return Int4ExpertWeights(packed.data(), scales.data(), E, N, K, "test.int4");
  }
};

class Int4GroupedLinearTest : public LinearOpTest {
 public:
  // with_scratch: the dequantize + cuBLAS path is allowed (Auto uses it only where the
  // grouped GEMM cannot run).
  Int4GroupedLinearTest(std::vector<Dims> shapes, bool with_scratch, Int4Path path = Int4Path::Auto)
      : shapes_(std::move(shapes)), with_scratch_(with_scratch), path_(path) {}
  std::vector<Dims> shapes() const override { return shapes_; }
  void make_inputs(const Dims& d, std::mt19937& rng) override {
    d_ = d;
    experts_.randomize(int64_t(d.expert_rows.size()), d.N, d.K, rng);
    x_ = random_bf16(size_t(d.M * d.K), rng);
    offsets_.assign(1, 0);
    for (int64_t r : d.expert_rows) offsets_.push_back(offsets_.back() + r);
    ASSERT_EQ(offsets_.back(), d.M);
  }
  std::vector<double> run_ref_cpu() override {
    const std::vector<float> x = widen_bf16(x_);
    std::vector<double> y(size_t(d_.M * d_.N));
    for (int64_t e = 0; e < experts_.E; ++e) {
      const int64_t rows = offsets_[size_t(e + 1)] - offsets_[size_t(e)];
      if (rows == 0) continue;
      const std::vector<float> xe(x.begin() + offsets_[size_t(e)] * d_.K, x.begin() + offsets_[size_t(e + 1)] * d_.K);
      const std::vector<double> ye = matmul_ref(xe, experts_.dequantize(e), rows, d_.N, d_.K);
      std::copy(ye.begin(), ye.end(), y.begin() + offsets_[size_t(e)] * d_.N);
    }
    return y;
  }
  std::vector<float> run_gpu(GpuContext& ctx) override {
    const Int4ExpertWeights w = experts_.upload();
    auto x = DeviceBuffer<uint16_t>::from_host(x_);
    auto y = poisoned<float>(size_t(d_.M * d_.N));
    DeviceBuffer<uint16_t> scratch(with_scratch_ ? size_t(d_.N * d_.K) : 0);
    int4_grouped_linear(ctx, w, reinterpret_cast<const __nv_bfloat16*>(x.get()), offsets_, y.get(),
                        reinterpret_cast<__nv_bfloat16*>(scratch.get()), path_);
    ctx.synchronize();
    return y.to_host();
  }
  // The decode kernel multiplies by q*s exactly in fp32 where the checkpoint's definition
  // rounds q*s to bf16 (<= 2^-9 relative per weight, independent): NMSE ~ 2^-18/3 ≈ 1.3e-6;
  // fp32 accumulation adds ~1e-13. The grouped GEMM and dequantize + cuBLAS use bf16(q*s)
  // exactly (a wrong nibble, scale or tile row would cost NMSE ~1e-2 or more).
  double tolerance() const override { return 1e-5; }

 private:
  std::vector<Dims> shapes_;
  bool with_scratch_;
  Int4Path path_;
  Dims d_{};
  Int4Experts experts_;
  std::vector<uint16_t> x_;
  std::vector<int64_t> offsets_;
};

// Dense shapes are one-expert groups; grouped shapes include experts with zero rows,
// more rows than one 64-row tile, and V4-Flash's expert shapes.
std::vector<Dims> int4_shapes() {
  return {
      {1, 2048, 4096, {1}},
      {13, 256, 512, {13}},
      {64, 4096, 2048, {64}},
      {200, 512, 1024, {200}},
      {157, 512, 1024, {0, 1, 5, 0, 64, 70, 17, 0}},
      {20, 2048, 4096, {3, 0, 0, 9, 1, 0, 7, 0}},
      {40, 4096, 2048, {0, 32, 0, 8}},
      {9, 256, 3072, {8, 0, 1}},  // whole-K decode kernel in 3 rounds of 8 × 128 inputs
      {4, 256, 512, {4}},         // K = 512: split-K decode kernel even for few rows
  };
}

// Ragged batches for the grouped GEMM: empty experts, 1 row, the 64-row narrow-tile
// limit and one past it, full 128-row tiles with and without remainders, and V4-Flash's
// w2 shape.
std::vector<Dims> int4_gemm_shapes() {
  return {
      {887, 512, 1024, {0, 129, 1, 0, 200, 64, 65, 128, 300, 0}},
      {190, 4096, 2048, {150, 0, 40}},
      {300, 256, 4096, {0, 0, 300}},
  };
}

TEST_F(CudaLinear, Int4TensorCoreKernel) {
  std::vector<Dims> shapes = int4_shapes();
  shapes.push_back(int4_gemm_shapes()[0]);
  Int4GroupedLinearTest op(shapes, false, Int4Path::DecodeKernel);
  check_op(op, 500);
}

TEST_F(CudaLinear, Int4AutoPaths) {
  std::vector<Dims> shapes = int4_shapes();
  shapes.push_back(int4_gemm_shapes()[0]);
  Int4GroupedLinearTest op(shapes, true);
  check_op(op, 600);
}

TEST_F(CudaLinear, Int4GroupedGemm) {
  std::vector<Dims> shapes = int4_gemm_shapes();
  for (const Dims& d : int4_shapes()) shapes.push_back(d);  // every expert through the GEMM, also tiny ones
  Int4GroupedLinearTest op(shapes, false, Int4Path::GroupedGemm);
  check_op(op, 550);
}

TEST_F(CudaLinear, Int4DequantizeThenCublas) {
  Int4GroupedLinearTest op({int4_gemm_shapes()[0], int4_shapes()[4]}, true, Int4Path::DequantCublas);
  check_op(op, 580);
}

// The split-K decode kernel's K slices (2, 4, 8 chunks of 64) and the whole-K kernel
// (forced for every item of <= 8 rows, also in K = 3072's three rounds) give the same
// results.
TEST_F(CudaLinear, Int4DecodeSliceChoices) {
  for (int chunks : {2, 4, 8, kInt4DecodeWholeK}) {
    SCOPED_TRACE("chunks " + std::to_string(chunks));
    int4_force_decode_chunks(chunks);
    Int4GroupedLinearTest op({int4_shapes()[0], int4_shapes()[5], int4_shapes()[7]}, false, Int4Path::DecodeKernel);
    check_op(op, 590);
  }
  int4_force_decode_chunks(0);
}

// Routed experts' gate/up projections fused with the clamped SwiGLU (one launch).
class Int4SwigluTest : public LinearOpTest {
 public:
  std::vector<Dims> shapes() const override {
    return {{1, 2048, 4096, {1}},
            {157, 256, 1024, {0, 1, 5, 0, 64, 70, 17, 0}},
            {24, 2048, 4096, {6, 0, 18}},
            {330, 256, 1024, {200, 0, 130}}};
  }
  // N is the SwiGLU width F; the fused weight has 2F rows.
  void make_inputs(const Dims& d, std::mt19937& rng) override {
    d_ = d;
    w1_.randomize(int64_t(d.expert_rows.size()), d.N, d.K, rng);
    w3_.randomize(int64_t(d.expert_rows.size()), d.N, d.K, rng);
    x_ = random_bf16(size_t(d.M * d.K), rng);
    offsets_.assign(1, 0);
    for (int64_t r : d.expert_rows) offsets_.push_back(offsets_.back() + r);
  }
  std::vector<double> run_ref_cpu() override {
    const std::vector<float> x = widen_bf16(x_);
    std::vector<double> h(size_t(d_.M * d_.N));
    for (int64_t e = 0; e < w1_.E; ++e) {
      const int64_t rows = offsets_[size_t(e + 1)] - offsets_[size_t(e)];
      if (rows == 0) continue;
      const std::vector<float> xe(x.begin() + offsets_[size_t(e)] * d_.K, x.begin() + offsets_[size_t(e + 1)] * d_.K);
      // Experts with kInt4GemmMinRows rows or more run the grouped GEMM, which uses bf16(q*s).
      const bool exact = rows < kInt4GemmMinRows;
      const std::vector<double> g = matmul_ref(xe, w1_.dequantize(e, exact), rows, d_.N, d_.K);
      const std::vector<double> u = matmul_ref(xe, w3_.dequantize(e, exact), rows, d_.N, d_.K);
      for (size_t i = 0; i < g.size(); ++i) {
        const double gc = std::min(g[i], double(kLimit)), uc = std::clamp(u[i], -double(kLimit), double(kLimit));
        h[size_t(offsets_[size_t(e)] * d_.N) + i] = gc / (1.0 + std::exp(-gc)) * uc;
      }
    }
    return h;
  }
  std::vector<float> run_gpu(GpuContext& ctx) override {
    const Int4ExpertWeights w = Int4ExpertWeights::gate_up(w1_.packed.data(), w1_.scales.data(), w3_.packed.data(),
                                                           w3_.scales.data(), w1_.E, d_.N, d_.K, "test.w13");
    auto x = DeviceBuffer<uint16_t>::from_host(x_);
    auto h = poisoned<uint16_t>(size_t(d_.M * d_.N));
    auto gate_up = poisoned<float>(size_t(d_.M * 2 * d_.N));
    int4_grouped_swiglu(ctx, w, reinterpret_cast<const __nv_bfloat16*>(x.get()), offsets_, kLimit,
                        reinterpret_cast<__nv_bfloat16*>(h.get()), gate_up.get());
    ctx.synchronize();
    return widen_bf16(h.to_host());
  }
  // The reference uses the exact products q*s, as the decode kernel does (the checkpoint's
  // bf16(q*s) is checked by the plain INT4 tests; SwiGLU's slope would amplify that
  // difference). What remains is the bf16 output rounding (NMSE <= 2^-18 ≈ 3.8e-6), fp32
  // summation order (~1e-13) and __expf (~1e-7 relative). A block's partial sum lost to a
  // race would cost ~1e-4.
  double tolerance() const override { return 5e-6; }

 private:
  // Small enough that both clamps bite on these inputs (|x·w| reaches several units).
  static constexpr float kLimit = 1.5f;
  Dims d_{};
  Int4Experts w1_, w3_;
  std::vector<uint16_t> x_;
  std::vector<int64_t> offsets_;
};

TEST_F(CudaLinear, Int4GateUpSwiglu) {
  Int4SwigluTest op;
  check_op(op, 650);
}

// The dequantize kernel reads the load-time tile layout: a layout op, so bitwise.
TEST_F(CudaLinear, Int4DequantizeIsBitwiseExact) {
  GpuContext ctx;
  std::mt19937 rng(700);
  Int4Experts ex;
  ex.randomize(3, 272, 1024, rng);
  const Int4ExpertWeights w = ex.upload();
  for (int64_t e = 0; e < ex.E; ++e) {
    auto out = poisoned<uint16_t>(size_t(ex.N * ex.K));
    int4_dequantize_expert(ctx, w, e, reinterpret_cast<__nv_bfloat16*>(out.get()));
    ctx.synchronize();
    const std::vector<uint16_t> got = out.to_host();
    const std::vector<float> ref = ex.dequantize(e);
    size_t mismatches = 0;
    for (size_t i = 0; i < ref.size(); ++i) mismatches += got[i] != f32_to_bf16(ref[i]);
    EXPECT_EQ(mismatches, 0u) << "expert " << e;
  }
}

// Shape checks happen before any CUDA call, so these run (and matter) without a GPU too.
TEST(CudaLinearShapes, BadWeightShapesAreOneClearError) {
  std::vector<int32_t> packed(16 * 1024 / 8);
  std::vector<uint16_t> scales(16 * 8);
  try {
    Int4ExpertWeights(packed.data(), scales.data(), 1, 16, 1000, "layers.3.ffn.experts.7.w2");
    FAIL() << "no error for in-features 1000";
  } catch (const dsq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.3.ffn.experts.7.w2: int4 kernels need in-features divisible by 512"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(Int4ExpertWeights(packed.data(), scales.data(), 1, 12, 1024, "w"), dsq::Error);  // N % 16
  std::vector<uint8_t> fp8(size_t(64 * 200));
  std::vector<float> fp8_scales(2);
  try {
    Fp8BlockLinear(fp8.data(), fp8_scales.data(), 64, 200, "layers.0.attn.wq_a");
    FAIL() << "no error for in-features 200";
  } catch (const dsq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.attn.wq_a: FP8 block linear needs in-features divisible by 128"),
              std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsq::cuda
