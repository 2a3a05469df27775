// QuantizedMatrix: one linear weight W[out, in] in any stored layout dsq reads or
// writes, with an exact dequantize(). The layout is separate from the kernels that
// consume it (backend/ picks a kernel per format).
//
//   Dense      values: f32 / bf16 / f16 [out, in]
//   Fp8Block   values: f8_e4m3 [out, in]; scales [ceil(out/128), ceil(in/128)] as f32, bf16
//              or f8_e8m0 (the release's power-of-two scales); W = v * s[o/128][i/128]
//   Int4Group  values: i32 [out, in/8] (compressed-tensors `weight_packed`: 8 nibbles per
//              int32, element k of a word in bits 4k..4k+3, stored as q + 8);
//              scales [out, in/group] bf16/f16/f32; W = (q) * s[o][i/group], q in [-8, 7]
//   Mxfp4      values: i8/u8 [out, in/2] (low nibble = even input index); scales f8_e8m0
//              [out, in/32]; W = e2m1(nibble) * 2^(e-127)
//
// "Exact" means: the value compressed-tensors' decompression (and vLLM's kernels) would
// produce from the same bytes. The product value * scale is computed in the scale's dtype,
// as compressed-tensors does: a bf16 scale gives bf16(q * s), an f32 scale gives the f32
// product, an E8M0 scale is a power of two and the product is exact.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace dsq {

enum class WeightFormat { Dense, Fp8Block, Int4Group, Mxfp4 };

std::string_view weight_format_name(WeightFormat f);

struct QuantizedMatrix {
  WeightFormat format = WeightFormat::Dense;
  int64_t rows = 0;  // out
  int64_t cols = 0;  // in
  Tensor values;
  Tensor scales;
  int64_t group_size = 128;  // Int4Group: inputs per scale; Fp8Block: block edge

  static QuantizedMatrix dense(Tensor w);  // w: [out, in]

  // Checks the tensors agree with the format and the logical shape; `what` names the
  // weight in the error.
  void validate(const std::string& what) const;
  // Rows [r0, r1) as f32, row-major, into out[(r1 - r0) * cols]. Exact.
  void dequantize_rows(int64_t r0, int64_t r1, float* out) const;
  Tensor dequantize() const;  // f32 [rows, cols]
  // Bytes of the stored values and scales.
  size_t stored_bytes() const;
};

// compressed-tensors pack-quantized nibble order for one row of int4 codes q in [-8, 7]:
// element i goes to word i/8, bits 4*(i%8)..+3, stored unsigned as q + 8. `n` must be a
// multiple of 8.
void int4_pack_row(const int8_t* codes, int64_t n, int32_t* words);
void int4_unpack_row(const int32_t* words, int64_t n, int8_t* codes);

}  // namespace dsq
