// GPU checks of the MXFP4 kernels (mxfp4_linear.h) against CpuOps, the fp32 reference
// that dequantizes e2m1 · 2^(e−127) exactly: through CudaOps::linear (the decode kernel
// at M <= 8, dequantize + cuBLAS above) and through mxfp4_grouped_linear on several
// experts with ragged rows (with and without the dequantize scratch), at tiny shapes and
// V4-Flash's expert shapes (w1/w3 [2048, 4096], w2 [4096, 2048]), M = 1, 3, 16, 300.
//
// Tolerances, from what the GPU path rounds:
//  - Exact case (bitwise): codes covering all 16 e2m1 values, scales 2^-2 … 2^2 and
//    activations that are small integers. Every product and partial sum is then a
//    multiple of 2^-3 below 2^21, exact in fp32 in any order, so GPU and CPU must agree
//    bit for bit. This is what catches a wrong code layout or a lost e2m1 subnormal (0.5).
//  - Random case: the only rounding on the GPU is the activations to bf16 (codes and
//    power-of-two scales are exact). Against CpuOps run on the same bf16-rounded
//    activations, only the fp32 summation order differs: relative L2 <= 1e-5 (≈ 2^-24 ·
//    √K ≈ 4e-6 worst case at K = 4096). Against the unrounded activations the error must
//    be the bf16 rounding's, 1.66e-3 (linear_ops_cuda_test.cpp's model), within [1/4, 2]×.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/mxfp4_linear.h"
#include "op_check.h"

namespace dsq::test {
namespace {

using cuda::CudaOps;
using cuda::DeviceBuffer;
using cuda::Precision;

constexpr double kSummationOrder = 1e-5;
constexpr double kBf16Activations = 1.66e-3;
const int64_t kRowCounts[] = {1, 3, 16, 300};

// A random MXFP4 weight: every byte pattern, scales 2^(e−127) for e in [e_lo, e_hi].
QuantizedMatrix random_mxfp4(int64_t rows, int64_t cols, int e_lo, int e_hi, std::mt19937& rng) {
  QuantizedMatrix w;
  w.format = WeightFormat::Mxfp4;
  w.rows = rows;
  w.cols = cols;
  w.values = Tensor::zeros(DType::U8, {rows, cols / 2});
  for (int64_t i = 0; i < w.values.numel(); ++i) w.values.mutable_data<uint8_t>()[i] = uint8_t(rng());
  w.scales = Tensor::zeros(DType::F8_E8M0, {rows, cols / 32});
  std::uniform_int_distribution<int> e(e_lo, e_hi);
  for (int64_t i = 0; i < w.scales.numel(); ++i) w.scales.mutable_data<uint8_t>()[i] = uint8_t(e(rng));
  w.validate("random mxfp4");
  return w;
}

std::vector<float> rounded_to_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

class CudaMxfp4 : public ::testing::Test {
 protected:
  void SetUp() override { DSQ_REQUIRE_GPU(); }
};

struct Shape {
  const char* name;
  int64_t rows, cols;
};
const Shape kShapes[] = {{"tiny [16, 512]", 16, 512},
                         {"tiny [48, 1024]", 48, 1024},
                         {"flash w1/w3 [2048, 4096]", 2048, 4096},
                         {"flash w2 [4096, 2048]", 4096, 2048}};

TEST_F(CudaMxfp4, LinearIsExactOnExactInputs) {
  std::mt19937 rng(1);
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::Fast);
  for (const Shape& s : kShapes) {
    const QuantizedMatrix w = random_mxfp4(s.rows, s.cols, 125, 129, rng);
    for (int64_t M : kRowCounts) {
      const std::string what = std::string(s.name) + " M=" + std::to_string(M);
      SCOPED_TRACE(what);
      std::vector<float> x(size_t(M * s.cols));
      std::uniform_int_distribution<int> small(-8, 8);
      for (float& v : x) v = float(small(rng));
      std::vector<float> want(size_t(M * s.rows));
      cpu.linear(w, x.data(), M, want.data());
      const Tensor xg = on_gpu(gpu, x);
      Tensor yg = poisoned_gpu(gpu, M * s.rows);
      gpu.linear(w, xg.data<float>(), M, yg.mutable_data<float>());
      const std::vector<float> got = floats_of(gpu, yg);
      int64_t mismatches = 0;
      for (size_t i = 0; i < got.size(); ++i) mismatches += !(got[i] == want[i]);
      EXPECT_EQ(mismatches, 0) << what << ": first values got " << got[0] << " want " << want[0];
    }
  }
}

TEST_F(CudaMxfp4, LinearMatchesCpuOnRandomWeights) {
  std::mt19937 rng(2);
  cpu::CpuOps cpu;
  CudaOps gpu(Precision::Fast);
  for (const Shape& s : kShapes) {
    const QuantizedMatrix w = random_mxfp4(s.rows, s.cols, 118, 122, rng);
    for (int64_t M : kRowCounts) {
      const std::string what = std::string(s.name) + " M=" + std::to_string(M);
      SCOPED_TRACE(what);
      const std::vector<float> x = random_floats(size_t(M * s.cols), rng);
      std::vector<float> want(size_t(M * s.rows)), want_rounded(want.size());
      cpu.linear(w, x.data(), M, want.data());
      const std::vector<float> xr = rounded_to_bf16(x);
      cpu.linear(w, xr.data(), M, want_rounded.data());
      const Tensor xg = on_gpu(gpu, x);
      Tensor yg = poisoned_gpu(gpu, M * s.rows);
      gpu.linear(w, xg.data<float>(), M, yg.mutable_data<float>());
      const std::vector<float> got = floats_of(gpu, yg);
      expect_close(got, want_rounded, kSummationOrder, what + " vs bf16-rounded activations");
      expect_close(got, want, 2 * kBf16Activations, what + " vs fp32 activations");
      // The bf16 rounding must be visible (the activations really went through bf16).
      double diff = 0, norm = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        norm += double(want[i]) * want[i];
      }
      EXPECT_GE(std::sqrt(diff / norm), kBf16Activations / 4) << what;
    }
  }
}

// Several experts stacked, rows sorted by expert: 0, 1, 3, 8, 9 and 20 rows (the decode
// kernel takes <= 8; more rows run dequantize + cuBLAS with scratch, or the decode kernel
// on 8-row pieces without).
TEST_F(CudaMxfp4, GroupedRaggedExperts) {
  std::mt19937 rng(3);
  const int64_t counts[] = {0, 1, 3, 8, 9, 20};
  const int64_t E = std::size(counts);
  cpu::CpuOps cpu;
  cuda::GpuContext ctx;
  for (const Shape& s : {kShapes[1], kShapes[3]}) {
    const int64_t N = s.rows, K = s.cols;
    std::vector<QuantizedMatrix> experts;
    std::vector<uint8_t> values, scales;
    for (int64_t e = 0; e < E; ++e) {
      experts.push_back(random_mxfp4(N, K, 118, 122, rng));
      const auto* v = experts.back().values.data<uint8_t>();
      const auto* sc = experts.back().scales.data<uint8_t>();
      values.insert(values.end(), v, v + N * K / 2);
      scales.insert(scales.end(), sc, sc + N * K / 32);
    }
    const cuda::Mxfp4ExpertWeights w(values.data(), scales.data(), E, N, K, "test experts");
    std::vector<int64_t> offsets(1, 0);
    for (int64_t c : counts) offsets.push_back(offsets.back() + c);
    const int64_t rows = offsets.back();
    const std::vector<float> x = rounded_to_bf16(random_floats(size_t(rows * K), rng));
    std::vector<uint16_t> xb(x.size());
    for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
    std::vector<float> want(size_t(rows * N));
    for (int64_t e = 0; e < E; ++e)
      if (counts[e] > 0)
        cpu.linear(experts[size_t(e)], x.data() + offsets[size_t(e)] * K, counts[e], want.data() + offsets[size_t(e)] * N);
    const auto xg = DeviceBuffer<uint16_t>::from_host(xb);
    DeviceBuffer<__nv_bfloat16> scratch(size_t(N * K));
    for (bool with_scratch : {true, false}) {
      const std::string what = std::string(s.name) + (with_scratch ? " with scratch" : " without scratch");
      SCOPED_TRACE(what);
      const auto yg = DeviceBuffer<float>::from_host(std::vector<float>(want.size(), std::nanf("")));
      cuda::mxfp4_grouped_linear(ctx, w, reinterpret_cast<const __nv_bfloat16*>(xg.get()), offsets, yg.get(),
                                 with_scratch ? scratch.get() : nullptr);
      ctx.synchronize();
      std::vector<float> got(want.size());
      DSQ_CUDA_CHECK(cudaMemcpy(got.data(), yg.get(), got.size() * sizeof(float), cudaMemcpyDeviceToHost));
      expect_close(got, want, kSummationOrder, what);
    }
  }
}

TEST_F(CudaMxfp4, RefusesShapesTheKernelsCannotTake) {
  const std::vector<uint8_t> bytes(40 * 512, 0);
  try {
    cuda::Mxfp4ExpertWeights w(bytes.data(), bytes.data(), 1, 40, 512, "layers.0.ffn.experts.0.w1");
    FAIL() << "a [40, 512] weight was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.ffn.experts.0.w1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsq::test
