#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/dot.h"

namespace dsq::cpu {

void sink_attention(const float* q, int64_t n_heads, int64_t dim, const float* const* keys,
                    int64_t n_keys, const float* sinks, float scale, float* out, float* scratch) {
  for (int64_t h = 0; h < n_heads; ++h) {
    const float* qh = q + h * dim;
    float* oh = out + h * dim;
    float m = sinks[h];
    for (int64_t j = 0; j < n_keys; ++j) {
      scratch[j] = dot(qh, keys[j], dim) * scale;
      m = std::max(m, scratch[j]);
    }
    float denom = std::exp(sinks[h] - m);
    for (int64_t j = 0; j < n_keys; ++j) {
      scratch[j] = std::exp(scratch[j] - m);
      denom += scratch[j];
    }
    std::fill(oh, oh + dim, 0.0f);
    for (int64_t j = 0; j < n_keys; ++j) {
      const float p = scratch[j] / denom;
      for (int64_t c = 0; c < dim; ++c) oh[c] += p * keys[j][c];
    }
  }
}

}  // namespace dsq::cpu
