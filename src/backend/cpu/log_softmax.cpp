#include "backend/cpu/log_softmax.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace dsq::cpu {

namespace {

typedef float Floats __attribute__((vector_size(32)));
typedef int32_t Ints __attribute__((vector_size(32)));

// e^x for x <= 0: 2^n · e^r with n = round(x / ln 2), |r| <= ln 2 / 2, and e^r by its
// degree-6 Taylor polynomial (truncation error < 3e-7 relative). Inputs below −87 are
// clamped (their terms are below 1e-37 next to the row maximum's 1).
inline Floats exp_nonpositive(Floats x) {
  x = x < -87.0f ? Floats{} - 87.0f : x;
  const Floats t = x * 1.44269504f + 0.5f;
  Ints n = __builtin_convertvector(t, Ints);
  n += (__builtin_convertvector(n, Floats) > t);  // truncation -> floor for negative t
  const Floats nf = __builtin_convertvector(n, Floats);
  const Floats r = (x - nf * 0.693145751953125f) - nf * 1.428606765330187e-06f;
  Floats p = 1.0f / 720 + r * 0.0f;
  p = 1.0f / 120 + r * p;
  p = 1.0f / 24 + r * p;
  p = 1.0f / 6 + r * p;
  p = 0.5f + r * p;
  p = 1.0f + r * p;
  p = 1.0f + r * p;
  const Ints bits = (n + 127) << 23;
  Floats scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace

double log_prob_of(const float* logits, int64_t n, int64_t target) {
  const float m = *std::max_element(logits, logits + n);
  Floats acc{};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Floats v;
    std::memcpy(&v, logits + i, sizeof(v));
    acc += exp_nonpositive(v - m);
  }
  double sum = 0;
  for (int k = 0; k < 8; ++k) sum += acc[k];
  for (; i < n; ++i) sum += std::exp(logits[i] - m);
  return double(logits[target] - m) - std::log(sum);
}

}  // namespace dsq::cpu
