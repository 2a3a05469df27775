// Row softmax and log-softmax in fp32 (max-subtracted), for logits and probabilities.
#pragma once

#include <cstdint>

namespace dsq::cpu {

// In place over one row of n values.
void softmax_inplace(float* x, int64_t n);
// log_softmax(x)[target] for one row: logit − max − log Σ exp(logit − max), the terms in
// fp32 and their sum in double.
double log_prob_of(const float* logits, int64_t n, int64_t target);

}  // namespace dsq::cpu
