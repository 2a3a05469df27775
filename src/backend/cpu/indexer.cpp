#include "backend/cpu/indexer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/linear.h"
#include "backend/cpu/topk.h"
#include "core/thread_pool.h"

namespace dsq::cpu {

void indexer_scores(const float* q, const float* weights, int64_t n_queries, int64_t n_heads, int64_t head_dim,
                    const float* keys, int64_t n_keys, float* scores) {
  if (n_queries == 0 || n_keys == 0) return;
  const float scale = 1.0f / std::sqrt(float(head_dim)) / std::sqrt(float(n_heads));
  // dots[i·n_heads + h][s] = q[i][h] · keys[s]
  const QuantizedMatrix key_matrix =
      QuantizedMatrix::dense(Tensor::view(DType::F32, {n_keys, head_dim}, keys, nullptr));
  std::vector<float> dots(static_cast<size_t>(n_queries * n_heads * n_keys));
  linear(q, n_queries * n_heads, key_matrix, dots.data());
  parallel_for(n_queries, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* out = scores + i * n_keys;
      std::fill(out, out + n_keys, 0.0f);
      for (int64_t h = 0; h < n_heads; ++h) {
        const float w = weights[i * n_heads + h];
        const float* d = dots.data() + (i * n_heads + h) * n_keys;
        for (int64_t s = 0; s < n_keys; ++s) out[s] += std::max(d[s], 0.0f) * w;
      }
      for (int64_t s = 0; s < n_keys; ++s) out[s] *= scale;
    }
  });
}

std::vector<int64_t> indexer_select(float* scores, int64_t n, int64_t topk, int64_t visible) {
  for (int64_t s = std::max<int64_t>(visible, 0); s < n; ++s)
    scores[s] = -std::numeric_limits<float>::infinity();
  std::vector<int64_t> picks = topk_indices(scores, n, std::min(topk, n));
  std::erase_if(picks, [&](int64_t s) { return s >= visible; });
  return picks;
}

}  // namespace dsq::cpu
