#include "backend/cpu/indexer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/topk.h"

namespace dsq::cpu {

void indexer_scores(const float* q, const float* weights, int64_t n_heads, int64_t head_dim,
                    const float* keys, int64_t n_keys, float* scores) {
  const float scale = 1.0f / std::sqrt(float(head_dim)) / std::sqrt(float(n_heads));
  for (int64_t s = 0; s < n_keys; ++s) {
    const float* k = keys + s * head_dim;
    float total = 0;
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* qh = q + h * head_dim;
      float dot = 0;
      for (int64_t c = 0; c < head_dim; ++c) dot += qh[c] * k[c];
      total += std::max(dot, 0.0f) * weights[h];
    }
    scores[s] = total * scale;
  }
}

std::vector<int64_t> indexer_select(float* scores, int64_t n, int64_t topk, int64_t visible) {
  for (int64_t s = std::max<int64_t>(visible, 0); s < n; ++s)
    scores[s] = -std::numeric_limits<float>::infinity();
  std::vector<int64_t> picks = topk_indices(scores, n, std::min(topk, n));
  std::erase_if(picks, [&](int64_t s) { return s >= visible; });
  return picks;
}

}  // namespace dsq::cpu
