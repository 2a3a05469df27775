#include "backend/cpu/embedding.h"

#include <cstring>

#include "core/error.h"

namespace dsq::cpu {

void embedding(const QuantizedMatrix& table, const int64_t* ids, int64_t n, float* out) {
  const int64_t H = table.cols;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    DSQ_CHECK(id >= 0 && id < table.rows, "token id ", id, " outside the vocabulary [0, ", table.rows, ")");
    float* row = out + i * H;
    if (table.format == WeightFormat::Dense && table.values.dtype() == DType::BF16) {
      const uint16_t* src = table.values.data<uint16_t>() + id * H;
      for (int64_t c = 0; c < H; ++c) row[c] = bf16_to_f32(src[c]);
    } else if (table.format == WeightFormat::Dense && table.values.dtype() == DType::F32) {
      std::memcpy(row, table.values.data<float>() + id * H, size_t(H) * sizeof(float));
    } else {
      table.dequantize_rows(id, id + 1, row);
    }
  }
}

}  // namespace dsq::cpu
