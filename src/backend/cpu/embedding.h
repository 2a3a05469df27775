// Embedding lookup: rows of the table (any weight format) for a list of token ids, as f32.
#pragma once

#include <cstdint>

#include "formats/quantized_matrix.h"

namespace dsq::cpu {

// out: [n, table.cols]. Throws on an id outside [0, table.rows).
void embedding(const QuantizedMatrix& table, const int64_t* ids, int64_t n, float* out);

}  // namespace dsq::cpu
