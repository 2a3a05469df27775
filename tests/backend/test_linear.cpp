// linear_rows against a naive double-precision product: odd sizes (panel and register
// block tails), row ranges with strides, bf16 / f32 / f16 dense weights, and a quantized
// format through dequantize_rows.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/linear.h"

namespace dsq::cpu {
namespace {

float value(int64_t i) { return std::sin(float(i) * 0.37f) + 0.25f * std::cos(float(i) * 1.7f); }

void check(DType dtype, int64_t rows, int64_t cols, int64_t n) {
  Tensor w32 = Tensor::zeros(DType::F32, {rows, cols});
  for (int64_t i = 0; i < rows * cols; ++i) w32.mutable_data<float>()[i] = value(i);
  const Tensor w = dtype == DType::F32 ? w32 : w32.cast(dtype);
  const Tensor exact = w.to_f32();  // the stored values, which the kernel must use exactly
  const QuantizedMatrix m = QuantizedMatrix::dense(w);
  const int64_t x_stride = cols + 3;
  std::vector<float> x(size_t(n * x_stride));
  for (size_t i = 0; i < x.size(); ++i) x[i] = value(int64_t(i) + 7);
  const int64_t r0 = rows / 3, r1 = rows - 1, out = r1 - r0, y_stride = out + 5;
  std::vector<float> y(size_t(n * y_stride), -1.0f);
  linear_rows(x.data(), n, x_stride, m, r0, r1, y.data(), y_stride);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = r0; o < r1; ++o) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < cols; ++k) {
        ref += double(x[i * x_stride + k]) * exact.data<float>()[o * cols + k];
        mag += std::abs(double(x[i * x_stride + k]) * exact.data<float>()[o * cols + k]);
      }
      // fp32 accumulation: the error is bounded by a few ulps of the absolute sum.
      ASSERT_NEAR(y[i * y_stride + (o - r0)], ref, 1e-6 * mag + 1e-6)
          << dtype_name(dtype) << " " << rows << "x" << cols << " n=" << n << " at " << i << "," << o;
    }
  // Padding between output rows is untouched.
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i * y_stride + out], -1.0f);
}

TEST(Linear, MatchesNaiveProductForDenseDtypesAndOddShapes) {
  check(DType::BF16, 77, 45, 13);
  check(DType::F32, 200, 64, 1);
  check(DType::F16, 33, 130, 7);
  check(DType::BF16, 1100, 24, 50);
}

TEST(Linear, QuantizedFormatGoesThroughDequantizeRows) {
  // A 4-bit group-quantized matrix: the product must equal x · dequantize()ᵀ.
  const int64_t rows = 40, cols = 64;
  QuantizedMatrix m;
  m.format = WeightFormat::Int4Group;
  m.rows = rows;
  m.cols = cols;
  m.group_size = 32;
  m.values = Tensor::zeros(DType::I32, {rows, cols / 8});
  for (int64_t i = 0; i < rows * cols / 8; ++i)
    m.values.mutable_data<int32_t>()[i] = int32_t(0x9E3779B9u * uint32_t(i + 1));
  m.scales = Tensor::zeros(DType::F32, {rows, cols / 32});
  for (int64_t i = 0; i < rows * cols / 32; ++i) m.scales.mutable_data<float>()[i] = 0.01f * float(i % 7 + 1);
  m.validate("test int4");
  const Tensor dq = m.dequantize();
  const int64_t n = 9;
  std::vector<float> x(size_t(n * cols)), y(size_t(n * rows));
  for (size_t i = 0; i < x.size(); ++i) x[i] = value(int64_t(i));
  linear(x.data(), n, m, y.data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < rows; ++o) {
      double ref = 0;
      for (int64_t k = 0; k < cols; ++k) ref += double(x[i * cols + k]) * dq.data<float>()[o * cols + k];
      ASSERT_NEAR(y[i * rows + o], ref, 1e-5);
    }
}

}  // namespace
}  // namespace dsq::cpu
