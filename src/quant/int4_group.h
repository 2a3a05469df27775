// Symmetric INT4 group quantization as compressed-tensors defines it (W4A16 preset):
// per (row, group of `group` inputs) scale = bf16(absmax / 7.5), an all-zero group gets
// bf16's eps; code = clamp(round_half_even(w / scale), -8, 7); value = bf16(code * scale).
// RTN is just this; GPTQ chooses different codes for the same (static) scales.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/quantized_matrix.h"

namespace dsq::quant {

// bf16 scales (as raw bits) [rows, cols / group] from f32 weights [rows, cols].
std::vector<uint16_t> int4_group_scales(const float* w, int64_t rows, int64_t cols, int64_t group);

// The code for x under scale s (s given as its f32 value).
inline int8_t int4_code(float x, float s) {
  float y = x / s;
  y = y < -8.0f ? -8.0f : (y > 7.0f ? 7.0f : y);
  return int8_t(__builtin_rintf(y));  // default rounding mode: half to even
}
// The dequantized value of a code, computed in bf16 like compressed-tensors' q * scale.
inline float int4_value(int8_t q, float s) { return bf16_to_f32(f32_to_bf16(float(q) * s)); }

// A zero-filled compressed-tensors pack-quantized matrix: i32 words [rows, cols/8], bf16
// scales [rows, cols/group].
QuantizedMatrix zero_int4_matrix(int64_t rows, int64_t cols, int64_t group);

// A compressed-tensors pack-quantized matrix from codes [rows, cols] and bf16 scales.
QuantizedMatrix make_int4_matrix(const std::vector<int8_t>& codes, const std::vector<uint16_t>& scales,
                                 int64_t rows, int64_t cols, int64_t group);

// Round-to-nearest INT4 of f32 weights [rows, cols].
QuantizedMatrix quantize_int4_rtn(const float* w, int64_t rows, int64_t cols, int64_t group);

}  // namespace dsq::quant
