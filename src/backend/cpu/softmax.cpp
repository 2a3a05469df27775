#include "backend/cpu/softmax.h"

#include <algorithm>
#include <cmath>

namespace dsq::cpu {

void softmax_inplace(float* x, int64_t n) {
  if (n == 0) return;
  const float m = *std::max_element(x, x + n);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

double log_prob_of(const float* logits, int64_t n, int64_t target) {
  const float m = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(logits[i] - m);  // fp32 exp, double sum
  return double(logits[target] - m) - std::log(sum);
}

}  // namespace dsq::cpu
