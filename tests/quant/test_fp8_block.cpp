// FP8 128x128 block quantization: scale rules and values against hand-computed examples.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "quant/fp8_block.h"

namespace dsq::quant {
namespace {

TEST(Fp8Block, PowerOfTwoScaleIsTheSmallestCoveringTheBlock) {
  // 130 x 4 weight -> blocks [2, 1]. Block 0 absmax 134.4: 134.4/448 = 0.3 -> scale 0.5;
  // 134.4/0.5 = 268.8 lies between e4m3 256 and 288 (step 32) -> 256 -> dequantized 128.
  // Block 1 (row 128..129) absmax 448 exactly -> scale 1, values exact.
  std::vector<float> w(130 * 4, 0.0f);
  w[0] = 134.4f;
  w[1] = -1.0f;
  w[128 * 4] = 448.0f;
  w[129 * 4 + 3] = -3.0f;
  const QuantizedMatrix m = quantize_fp8_block(w.data(), 130, 4);
  m.validate("test");
  ASSERT_EQ(m.scales.shape(), (Shape{2, 1}));
  EXPECT_EQ(m.scales.dtype(), DType::F32);
  EXPECT_EQ(m.scales.get_f32(0), 0.5f);
  EXPECT_EQ(m.scales.get_f32(1), 1.0f);
  const Tensor dq = m.dequantize();
  EXPECT_EQ(dq.get_f32(0), 128.0f);
  EXPECT_EQ(dq.get_f32(1), -1.0f);
  EXPECT_EQ(dq.get_f32(128 * 4), 448.0f);
  EXPECT_EQ(dq.get_f32(129 * 4 + 3), -3.0f);
}

TEST(Fp8Block, AbsMaxRuleMapsTheBlockMaximumTo448) {
  std::vector<float> w = {134.4f, -1.0f, 0.0f, 2.0f};
  const QuantizedMatrix m = quantize_fp8_block(w.data(), 1, 4, Fp8ScaleRule::AbsMax);
  EXPECT_FLOAT_EQ(m.scales.get_f32(0), 134.4f / 448.0f);
  EXPECT_EQ(m.values.data<uint8_t>()[0], 0x7E);  // 448
}

TEST(Fp8Block, ExactPowersOfTwoScaledValuesRoundTripBitExactly) {
  // Values that already are e4m3 * 2^k with a block maximum above 224 * 2^k requantize to
  // the same bytes: the property that makes FP8 pass-through and requantization agree.
  std::vector<float> w(128 * 128);
  for (size_t i = 0; i < w.size(); ++i) w[i] = f8e4m3_to_f32(uint8_t((i * 37) % 0x7E)) * 0.25f;
  w[5] = 448.0f * 0.25f;
  const QuantizedMatrix m = quantize_fp8_block(w.data(), 128, 128);
  EXPECT_EQ(m.scales.get_f32(0), 0.25f);
  const Tensor dq = m.dequantize();
  EXPECT_EQ(std::memcmp(dq.bytes(), w.data(), w.size() * 4), 0);
}

TEST(Fp8Block, PassThroughWidensE8M0ScalesExactly) {
  QuantizedMatrix m;
  m.format = WeightFormat::Fp8Block;
  m.rows = 1;
  m.cols = 1;
  m.values = Tensor::zeros(DType::F8_E4M3, {1, 1});
  m.scales = Tensor::zeros(DType::F8_E8M0, {1, 1});
  m.scales.mutable_data<uint8_t>()[0] = 120;  // 2^-7
  const QuantizedMatrix f = fp8_block_with_f32_scales(m);
  EXPECT_EQ(f.scales.dtype(), DType::F32);
  EXPECT_EQ(f.scales.get_f32(0), 0.0078125f);
  EXPECT_EQ(f.values.bytes(), m.values.bytes());  // the same bytes, not a copy
}

}  // namespace
}  // namespace dsq::quant
