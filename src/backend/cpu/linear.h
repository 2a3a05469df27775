// Linear layer y = x·Wᵀ for a weight in any stored format (formats/quantized_matrix.h).
//
// Dense bf16/f16/f32 weights are converted tile by tile (a few dozen rows at a time) into
// a per-thread f32 buffer and each converted tile is reused for every input row of the
// call, so a batch of tokens pays the conversion once and weights are never expanded to
// f32 as a whole. Quantized formats go through QuantizedMatrix::dequantize_rows on the
// same tiles. Accumulation is fp32. Work is split over output-row tiles.
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
