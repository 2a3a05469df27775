// Perplexity over one token stream with non-overlapping windows (spec §7.3): windows
// [i, i+ctx) for i = 0, ctx, 2·ctx, … while i < n − ctx − 1; each is one stateless forward
// that scores its ctx − 1 next-token predictions; ppl = exp(total NLL / count).
// Several windows go through one forward call as a batch of independent sequences.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "model/model.h"

namespace dsq::model {

struct PerplexityResult {
  double total_nll = 0;   // Σ −log p(next token), natural log
  int64_t scored = 0;     // number of predictions scored
  int64_t windows = 0;
  double perplexity() const;
};

// The number of windows the stream yields for `ctx` (0 when it is too short).
int64_t perplexity_windows(int64_t n_tokens, int64_t ctx);

// `on_progress(windows_done)` is called after each batch.
PerplexityResult evaluate_perplexity(const Model& model, std::span<const int64_t> ids, int64_t ctx,
                                     int64_t windows_per_batch,
                                     const std::function<void(int64_t)>& on_progress = {});

}  // namespace dsq::model
