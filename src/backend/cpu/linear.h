// Linear layer y = x·Wᵀ for a weight in any stored format (formats/quantized_matrix.h).
//
// The weight is processed in tiles of output rows: each tile is converted to f32 (dense
// bf16/f16 by a direct conversion, quantized formats through
// QuantizedMatrix::dequantize_rows) and packed into panels laid out for the
// register-blocked kernel, then reused for every input row of the call. A batch of
// tokens therefore pays the conversion once per tile, and weights are never expanded to
// f32 as a whole. Accumulation is fp32. Work is split over tiles and, when there are few
// tiles, over blocks of input rows as well.
#pragma once

#include <cstdint>

#include "formats/quantized_matrix.h"

namespace dsq::cpu {

// Output rows [row_begin, row_end) of W applied to n input rows:
//   y[i*y_stride + (o - row_begin)] = Σ_k x[i*x_stride + k] · W[o, k]
// x rows hold w.cols values; y receives row_end - row_begin values per input row.
void linear_rows(const float* x, int64_t n, int64_t x_stride, const QuantizedMatrix& w,
                 int64_t row_begin, int64_t row_end, float* y, int64_t y_stride);

// The whole matrix: x [n, w.cols] -> y [n, w.rows], both contiguous.
inline void linear(const float* x, int64_t n, const QuantizedMatrix& w, float* y) {
  linear_rows(x, n, w.cols, w, 0, w.rows, y, w.rows);
}

}  // namespace dsq::cpu
