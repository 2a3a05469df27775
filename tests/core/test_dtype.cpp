#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"

namespace dsq {
namespace {

TEST(DType, Bf16RoundsHalfToEven) {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to the even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1.0078125 (odd mantissa) and 1.015625: goes up.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(bf16_to_f32(0xc040), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F8E4M3AllCodesRoundTrip) {
  for (int code = 0; code < 256; ++code) {
    const float v = f8e4m3_to_f32(uint8_t(code));
    if ((code & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v));
      continue;
    }
    EXPECT_EQ(f32_to_f8e4m3(v), code == 0x80 ? 0x80 : code) << "code " << code << " value " << v;
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(f32_to_f8e4m3(1e6f), 0x7e);     // saturates
  EXPECT_EQ(f32_to_f8e4m3(-1e6f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);  // halfway 1.0 / 1.125: even (1.0)
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3a);  // halfway 1.125 / 1.25: even (1.25)
}

TEST(DType, F16RoundTripAndSubnormals) {
  for (int code = 0; code < 65536; ++code) {
    if (((code >> 10) & 0x1f) == 0x1f && (code & 0x3ff)) continue;  // NaNs
    const float v = f16_to_f32(uint16_t(code));
    EXPECT_EQ(f32_to_f16(v), code) << code;
  }
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(70000.0f), 0x7c00);
}

TEST(DType, E8M0AndFp4) {
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(130), 8.0f);
  EXPECT_EQ(e8m0_to_f32(120), std::ldexp(1.0f, -7));
  const float lut[8] = {0, .5f, 1, 1.5f, 2, 3, 4, 6};
  for (int n = 0; n < 16; ++n) {
    EXPECT_EQ(fp4_e2m1_to_f32(uint8_t(n)), (n & 8 ? -1 : 1) * lut[n & 7]);
    if (n != 8) {
      EXPECT_EQ(f32_to_fp4_e2m1(fp4_e2m1_to_f32(uint8_t(n))), n);
    }
  }
  EXPECT_EQ(f32_to_fp4_e2m1(2.5f), 4);   // tie 2 / 3: even code (2.0 = code 4)
  EXPECT_EQ(f32_to_fp4_e2m1(100.f), 7);  // saturates at 6
}

TEST(DType, SafetensorsNames) {
  DType t;
  ASSERT_TRUE(dtype_from_safetensors_name("F8_E4M3", &t));
  EXPECT_EQ(t, DType::F8_E4M3);
  EXPECT_FALSE(dtype_from_safetensors_name("F9", &t));
  EXPECT_EQ(dtype_bytes(DType::I4, 6), 3u);
}

}  // namespace
}  // namespace dsq
