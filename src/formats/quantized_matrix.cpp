// QuantizedMatrix: validation and exact dequantization of the four weight layouts
// (see quantized_matrix.h for the layouts and the rounding rule of value * scale).
#include "formats/quantized_matrix.h"

#include <cstring>
#include <vector>

#include "core/error.h"

namespace dsq {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// value * scale, rounded to the scale's dtype as compressed-tensors' dequantize does.
inline float scaled(float value, DType scale_dtype, float scale) {
  const float product = value * scale;
  switch (scale_dtype) {
    case DType::BF16: return bf16_to_f32(f32_to_bf16(product));
    case DType::F16: return f16_to_f32(f32_to_f16(product));
    default: return product;  // f32, or an exact power of two (e8m0)
  }
}

bool is_dense_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

}  // namespace

std::string_view weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::Dense: return "dense";
    case WeightFormat::Fp8Block: return "fp8-block";
    case WeightFormat::Int4Group: return "int4-group";
    case WeightFormat::Mxfp4: return "mxfp4";
  }
  return "?";
}

QuantizedMatrix QuantizedMatrix::dense(Tensor w) {
  DSQ_CHECK(w.rank() == 2, "dense weight must be 2-D, got shape ", shape_string(w.shape()));
  QuantizedMatrix m;
  m.format = WeightFormat::Dense;
  m.rows = w.dim(0);
  m.cols = w.dim(1);
  m.values = std::move(w);
  return m;
}

void QuantizedMatrix::validate(const std::string& what) const {
  auto expect_shape = [&](const Tensor& t, const Shape& shape, const char* part) {
    DSQ_CHECK(t.defined() && t.shape() == shape, what, ": ", weight_format_name(format), " ", part,
              " must have shape ", shape_string(shape), ", found ",
              t.defined() ? shape_string(t.shape()) : std::string("none"));
  };
  DSQ_CHECK(rows > 0 && cols > 0, what, ": empty weight [", rows, ", ", cols, "]");
  switch (format) {
    case WeightFormat::Dense:
      expect_shape(values, {rows, cols}, "values");
      DSQ_CHECK(is_dense_dtype(values.dtype()), what, ": dense weight has dtype ",
                dtype_name(values.dtype()), " (expected f32, bf16 or f16)");
      return;
    case WeightFormat::Fp8Block:
      DSQ_CHECK(group_size > 0, what, ": fp8 block edge must be positive");
      expect_shape(values, {rows, cols}, "values");
      expect_shape(scales, {ceil_div(rows, group_size), ceil_div(cols, group_size)}, "scales");
      DSQ_CHECK(values.dtype() == DType::F8_E4M3, what, ": fp8 values have dtype ",
                dtype_name(values.dtype()), " (expected f8_e4m3)");
      DSQ_CHECK(is_dense_dtype(scales.dtype()) || scales.dtype() == DType::F8_E8M0, what,
                ": fp8 block scales have dtype ", dtype_name(scales.dtype()));
      return;
    case WeightFormat::Int4Group:
      DSQ_CHECK(group_size > 0 && cols % group_size == 0 && cols % 8 == 0, what, ": ", cols,
                " inputs are not a multiple of the group size ", group_size, " and of 8");
      expect_shape(values, {rows, cols / 8}, "packed values");
      expect_shape(scales, {rows, cols / group_size}, "scales");
      DSQ_CHECK(values.dtype() == DType::I32, what, ": weight_packed has dtype ",
                dtype_name(values.dtype()), " (expected i32)");
      DSQ_CHECK(is_dense_dtype(scales.dtype()), what, ": int4 scales have dtype ",
                dtype_name(scales.dtype()));
      return;
    case WeightFormat::Mxfp4:
      DSQ_CHECK(cols % 32 == 0, what, ": mxfp4 needs inputs divisible by 32, got ", cols);
      expect_shape(values, {rows, cols / 2}, "packed values");
      expect_shape(scales, {rows, cols / 32}, "scales");
      DSQ_CHECK(values.dtype() == DType::I8 || values.dtype() == DType::U8, what,
                ": mxfp4 values have dtype ", dtype_name(values.dtype()), " (expected i8/u8)");
      DSQ_CHECK(scales.dtype() == DType::F8_E8M0, what, ": mxfp4 scales have dtype ",
                dtype_name(scales.dtype()), " (expected f8_e8m0)");
      return;
  }
}

void QuantizedMatrix::dequantize_rows(int64_t r0, int64_t r1, float* out) const {
  DSQ_CHECK(0 <= r0 && r0 <= r1 && r1 <= rows, "dequantize_rows: rows [", r0, ", ", r1,
            ") outside [0, ", rows, ")");
  switch (format) {
    case WeightFormat::Dense: {
      const Tensor part = values.slice_rows(r0, r1);
      if (values.dtype() == DType::F32) {
        std::memcpy(out, part.data<float>(), sizeof(float) * (r1 - r0) * cols);
      } else {
        const uint16_t* src = part.data<uint16_t>();
        const int64_t n = (r1 - r0) * cols;
        if (values.dtype() == DType::BF16)
          for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(src[i]);
        else
          for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(src[i]);
      }
      return;
    }
    case WeightFormat::Fp8Block: {
      const uint8_t* v = values.data<uint8_t>();
      const int64_t scale_cols = scales.dim(1);
      std::vector<float> row_scales(scale_cols);
      for (int64_t r = r0; r < r1; ++r) {
        if (r == r0 || r % group_size == 0)
          for (int64_t b = 0; b < scale_cols; ++b) row_scales[b] = scales.get_f32((r / group_size) * scale_cols + b);
        float* dst = out + (r - r0) * cols;
        const uint8_t* src = v + r * cols;
        for (int64_t c = 0; c < cols; ++c)
          dst[c] = scaled(f8e4m3_to_f32(src[c]), scales.dtype(), row_scales[c / group_size]);
      }
      return;
    }
    case WeightFormat::Int4Group: {
      const int32_t* words = values.data<int32_t>();
      const int64_t groups = cols / group_size;
      std::vector<int8_t> codes(cols);
      std::vector<float> row_scales(groups);
      for (int64_t r = r0; r < r1; ++r) {
        int4_unpack_row(words + r * (cols / 8), cols, codes.data());
        for (int64_t g = 0; g < groups; ++g) row_scales[g] = scales.get_f32(r * groups + g);
        float* dst = out + (r - r0) * cols;
        if (scales.dtype() == DType::BF16) {
          // 16 codes x one scale: the 16 possible products, each rounded to bf16 once.
          for (int64_t g = 0; g < groups; ++g) {
            float table[16];
            for (int q = 0; q < 16; ++q) table[q] = bf16_to_f32(f32_to_bf16(float(q - 8) * row_scales[g]));
            for (int64_t c = g * group_size; c < (g + 1) * group_size; ++c) dst[c] = table[codes[c] + 8];
          }
        } else {
          for (int64_t c = 0; c < cols; ++c) dst[c] = scaled(float(codes[c]), scales.dtype(), row_scales[c / group_size]);
        }
      }
      return;
    }
    case WeightFormat::Mxfp4: {
      const uint8_t* v = values.data<uint8_t>();
      const uint8_t* e = scales.data<uint8_t>();
      for (int64_t r = r0; r < r1; ++r) {
        float* dst = out + (r - r0) * cols;
        for (int64_t c = 0; c < cols; ++c) {
          const uint8_t byte = v[r * (cols / 2) + c / 2];
          const uint8_t nibble = (c & 1) ? (byte >> 4) : (byte & 0xf);
          dst[c] = fp4_e2m1_to_f32(nibble) * e8m0_to_f32(e[r * (cols / 32) + c / 32]);
        }
      }
      return;
    }
  }
}

Tensor QuantizedMatrix::dequantize() const {
  Tensor out = Tensor::zeros(DType::F32, {rows, cols});
  dequantize_rows(0, rows, out.mutable_data<float>());
  return out;
}

size_t QuantizedMatrix::stored_bytes() const {
  return values.nbytes() + (scales.defined() ? scales.nbytes() : 0);
}

void int4_pack_row(const int8_t* codes, int64_t n, int32_t* words) {
  DSQ_CHECK(n % 8 == 0, "int4 pack: row length ", n, " is not a multiple of 8");
  for (int64_t w = 0; w < n / 8; ++w) {
    uint32_t word = 0;
    for (int k = 0; k < 8; ++k) {
      const int q = codes[w * 8 + k];
      DSQ_CHECK(q >= -8 && q <= 7, "int4 pack: code ", q, " outside [-8, 7]");
      word |= uint32_t(q + 8) << (4 * k);
    }
    words[w] = int32_t(word);
  }
}

void int4_unpack_row(const int32_t* words, int64_t n, int8_t* codes) {
  for (int64_t w = 0; w < n / 8; ++w) {
    const uint32_t word = uint32_t(words[w]);
    for (int k = 0; k < 8; ++k) codes[w * 8 + k] = int8_t(int((word >> (4 * k)) & 0xf) - 8);
  }
}

}  // namespace dsq
