#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace dsq {

namespace {
struct DTypeInfo {
  DType type;
  int bits;
  std::string_view name;
  std::string_view safetensors;  // empty: no safetensors spelling
  bool is_float;
};
constexpr DTypeInfo kInfo[] = {
    {DType::F32, 32, "f32", "F32", true},        {DType::F16, 16, "f16", "F16", true},
    {DType::BF16, 16, "bf16", "BF16", true},     {DType::F8_E4M3, 8, "f8_e4m3", "F8_E4M3", true},
    {DType::F8_E8M0, 8, "f8_e8m0", "F8_E8M0", true}, {DType::I8, 8, "i8", "I8", false},
    {DType::U8, 8, "u8", "U8", false},           {DType::I32, 32, "i32", "I32", false},
    {DType::I64, 64, "i64", "I64", false},       {DType::I4, 4, "i4", "", false},
    {DType::FP4, 4, "fp4_e2m1", "", true},
};
const DTypeInfo& info(DType t) { return kInfo[static_cast<int>(t)]; }
}  // namespace

int dtype_bits(DType t) { return info(t).bits; }

size_t dtype_bytes(DType t, int64_t n) {
  const int bits = info(t).bits;
  DSQ_CHECK(bits >= 8 || n % 2 == 0, "packed ", info(t).name, " tensor needs an even element count, got ", n);
  return size_t(n) * size_t(bits) / 8;
}

std::string_view dtype_name(DType t) { return info(t).name; }
std::string_view dtype_safetensors_name(DType t) { return info(t).safetensors; }
bool dtype_is_float(DType t) { return info(t).is_float; }

bool dtype_from_safetensors_name(std::string_view s, DType* out) {
  for (const auto& i : kInfo) {
    if (!i.safetensors.empty() && i.safetensors == s) {
      *out = i.type;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return f32_from_bits(sign);
  // subnormal: value = mant * 2^-24, exact in f32
  const float v = std::ldexp(float(mant), -24);
  return sign ? -v : v;
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {                        // below the smallest normal: subnormal or zero
    const float a = f32_from_bits(abs);
    const float scaled = a * 16777216.0f;  // units of 2^-24, exact
    return sign | uint16_t(std::nearbyint(scaled));
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | uint16_t((r - 0x38000000u) >> 13);
}

float f8e4m3_to_f32(uint8_t v) {
  const bool neg = v & 0x80;
  const int exp = (v >> 3) & 0xf;
  const int mant = v & 0x7;
  float r;
  if (exp == 0xf && mant == 0x7) return f32_from_bits(0x7fc00000u);
  if (exp == 0) r = std::ldexp(float(mant), -9);  // subnormal: mant/8 * 2^-6
  else r = std::ldexp(float(8 + mant), exp - 10);  // (1 + mant/8) * 2^(exp-7)
  return neg ? -r : r;
}

uint8_t f32_to_f8e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  // Quantise onto the grid of the binade a lies in; nearbyint rounds half to even.
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1;    // a in [2^exp, 2^(exp+1))
  if (exp < -6) exp = -6;  // subnormal range shares the grid step 2^-9
  const float step = std::ldexp(1.0f, exp - 3);
  float q = std::nearbyint(a / step) * step;
  if (q >= 448.0f) return sign | 0x7e;
  if (q == 0.0f) return sign;
  int qe;
  std::frexp(q, &qe);
  const int qexp = qe - 1;
  if (qexp < -6) return sign | uint8_t(std::lrint(q / std::ldexp(1.0f, -9)));
  const int mant = int(std::lrint(q / std::ldexp(1.0f, qexp - 3))) - 8;
  return sign | uint8_t((qexp + 7) << 3) | uint8_t(mant);
}

float fp4_e2m1_to_f32(uint8_t nibble) {
  static constexpr float kLut[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = kLut[nibble & 7];
  return (nibble & 8) ? -v : v;
}

uint8_t f32_to_fp4_e2m1(float f) {
  static constexpr float kLut[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const uint8_t sign = std::signbit(f) ? 8 : 0;
  const float a = std::fabs(f);
  if (!(a < 6.0f)) return sign | 7;
  int best = 0;
  for (int i = 1; i < 8; ++i) {
    const float d_best = std::fabs(a - kLut[best]);
    const float d = std::fabs(a - kLut[i]);
    // On a tie, the even code (mantissa bit clear) wins: round half to even.
    if (d < d_best || (d == d_best && (i & 1) == 0)) best = i;
  }
  return sign | uint8_t(best);
}

}  // namespace dsq
