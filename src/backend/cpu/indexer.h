// The Lightning indexer (spec §2.9): scores of queries against the indexer keys and the
// causal top-k selection of compressed entries.
#pragma once

#include <cstdint>
#include <vector>

namespace dsq::cpu {

// For each of n_queries queries:
//   scores[i][s] = Σ_h weights[i][h] · ReLU(q[i][h] · keys[s]) · head_dim^(−1/2) · n_heads^(−1/2)
// q: [n_queries, n_heads, head_dim] (already rotated); weights: [n_queries, n_heads];
// keys: [n_keys, head_dim]; scores: [n_queries, n_keys]. The q·k products of all
// queries and heads run as one GEMM against the keys.
void indexer_scores(const float* q, const float* weights, int64_t n_queries, int64_t n_heads, int64_t head_dim,
                    const float* keys, int64_t n_keys, float* scores);

// Entries chosen for a query whose visibility threshold is `visible` (= ⌊(p+1)/m⌋):
// scores at s >= visible become −∞, the top min(topk, n) are taken over the whole row with
// torch's tie rule (topk.h), and picks >= visible are dropped. `scores` is modified.
std::vector<int64_t> indexer_select(float* scores, int64_t n, int64_t topk, int64_t visible);

}  // namespace dsq::cpu
