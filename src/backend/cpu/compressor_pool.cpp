#include "backend/cpu/compressor_pool.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dsq::cpu {

void softmax_pool(const float* const* values, const float* const* logits, int64_t n_slots,
                  int64_t width, float* out) {
  for (int64_t c = 0; c < width; ++c) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n_slots; ++j)
      if (logits[j]) m = std::max(m, logits[j][c]);
    float denom = 0, acc = 0;
    for (int64_t j = 0; j < n_slots; ++j) {
      if (!logits[j]) continue;
      const float e = std::exp(logits[j][c] - m);
      denom += e;
      acc += e * values[j][c];
    }
    out[c] = acc / denom;
  }
}

}  // namespace dsq::cpu
