// Element types dsq stores and computes with, and their bit-exact scalar conversions.
//
// Packed types (I4 for GPTQ int4, FP4 for MXFP4 e2m1) hold two elements per byte; a
// tensor of a packed type counts logical elements in its shape. Conversions to f32 are
// exact for every type; conversions from f32 round half to even (IEEE default) and
// saturate where the target format has no infinity (f8_e4m3 saturates at +-448).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace dsq {

enum class DType : uint8_t {
  F32,
  F16,
  BF16,
  F8_E4M3,  // OCP e4m3fn: no infinity, NaN = S.1111.111, max 448
  F8_E8M0,  // unsigned power-of-two scale: value = 2^(e-127), 0xFF = NaN
  I8,
  U8,
  I32,
  I64,
  I4,   // packed signed int4, two per byte, low nibble first
  FP4,  // packed e2m1, two per byte, low nibble first (bit 3 = sign)
};

// Bits per element (4 for the packed types).
int dtype_bits(DType t);
// Bytes for n elements; n must be even for the packed types.
size_t dtype_bytes(DType t, int64_t n);
// Short lower-case name for messages: "bf16", "f8_e4m3", ...
std::string_view dtype_name(DType t);
// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...); packed types have none.
std::string_view dtype_safetensors_name(DType t);
// Parses a safetensors dtype string; returns false for an unknown one.
bool dtype_from_safetensors_name(std::string_view s, DType* out);
bool dtype_is_float(DType t);

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- bf16 ----
inline float bf16_to_f32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // round half to even
  return uint16_t(u >> 16);
}

// ---- f16 ----
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// ---- f8 e4m3 (fn) ----
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);  // RNE, saturating to +-448, NaN -> 0x7f

// ---- e8m0 scale ----
inline float e8m0_to_f32(uint8_t e) {
  if (e == 0xff) return f32_from_bits(0x7fc00000u);
  if (e == 0) return f32_from_bits(0x00400000u);  // 2^-127 is a subnormal f32
  return f32_from_bits(uint32_t(e) << 23);
}

// ---- fp4 e2m1 (one nibble) ----
float fp4_e2m1_to_f32(uint8_t nibble);
uint8_t f32_to_fp4_e2m1(float f);  // RNE onto {0,.5,1,1.5,2,3,4,6}, saturating

}  // namespace dsq
