// Log-softmax of a row of logits, for scoring a known next token (perplexity).
#pragma once

#include <cstdint>

namespace dsq::cpu {

// log_softmax(x)[target] for one row: logit − max − log Σ exp(logit − max). The sum runs
// over a whole vocabulary for every scored token (perplexity), so it uses a vectorised
// exp (relative error < 1e-6, far below what a perplexity or a probability can show)
// with lane-wise fp32 partial sums added in double.
double log_prob_of(const float* logits, int64_t n, int64_t target);

}  // namespace dsq::cpu
