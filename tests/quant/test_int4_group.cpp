// INT4 symmetric group scales and RTN against hand-computed values (quantization-gptq.md
// §1.5: scale = bf16(absmax/7.5), clamp to [-8, 7] then round half to even).
#include <gtest/gtest.h>

#include <vector>

#include "quant/int4_group.h"

namespace dsq::quant {
namespace {

TEST(Int4Group, ScaleIsBf16OfAbsmaxOver7p5AndZeroGroupsGetEps) {
  std::vector<float> w(2 * 8, 0.0f);
  w[3] = -3.0f;  // row 0: absmax 3 -> 0.4 -> bf16 0x3ECD (0.400390625)
  w[1] = 1.0f;
  const auto s = int4_group_scales(w.data(), 2, 8, 8);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0], 0x3ECD);
  EXPECT_EQ(s[1], 0x3C00);  // all-zero row: torch.finfo(bfloat16).eps = 2^-7
}

TEST(Int4Group, RtnRoundsHalfToEvenAndClampsAsymmetrically) {
  // absmax 3.75 -> scale exactly 0.5. x/s: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -7.5 -> -8,
  // 7.5 clamps to 7, -0.5 -> -0 = 0.
  const std::vector<float> w = {0.25f, 0.75f, 1.25f, -3.75f, 3.75f, -0.25f, 1.0f, -1.0f};
  const QuantizedMatrix m = quantize_int4_rtn(w.data(), 1, 8, 8);
  int8_t codes[8];
  int4_unpack_row(m.values.data<int32_t>(), 8, codes);
  const int8_t expected[8] = {0, 2, 2, -8, 7, 0, 2, -2};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(codes[i], expected[i]) << "input " << i;
  EXPECT_EQ(m.scales.data<uint16_t>()[0], f32_to_bf16(0.5f));
  const Tensor dq = m.dequantize();
  EXPECT_EQ(dq.get_f32(3), -4.0f);
  EXPECT_EQ(dq.get_f32(4), 3.5f);
}

TEST(Int4Group, ScalesArePerRowAndPerGroup) {
  // 1 row, 256 inputs, group 128: group 0 absmax 7.5 (scale 1), group 1 absmax 15 (scale 2).
  std::vector<float> w(256, 0.0f);
  w[10] = 7.5f;
  w[200] = -15.0f;
  w[201] = 3.0f;
  const QuantizedMatrix m = quantize_int4_rtn(w.data(), 1, 256, 128);
  EXPECT_EQ(m.scales.dim(1), 2);
  EXPECT_EQ(m.scales.get_f32(0), 1.0f);
  EXPECT_EQ(m.scales.get_f32(1), 2.0f);
  const Tensor dq = m.dequantize();
  EXPECT_EQ(dq.get_f32(10), 7.0f);  // 7.5 clamps to code 7
  EXPECT_EQ(dq.get_f32(200), -16.0f);  // -7.5 rounds half to even: -8
  EXPECT_EQ(dq.get_f32(201), 4.0f);  // 1.5 -> 2
}

}  // namespace
}  // namespace dsq::quant
