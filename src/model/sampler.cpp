#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace dsq::model {

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) {
  DSQ_CHECK(params_.temperature >= 0, "sampling: temperature ", params_.temperature, " must be >= 0");
  DSQ_CHECK(params_.top_p > 0 && params_.top_p <= 1, "sampling: top-p ", params_.top_p, " must be in (0, 1]");
  DSQ_CHECK(params_.top_k >= 0, "sampling: top-k ", params_.top_k, " must be >= 0");
}

int64_t Sampler::next(const float* logits, int64_t vocab) {
  if (params_.temperature == 0) return std::max_element(logits, logits + vocab) - logits;
  // Candidates by descending logit (ties by id), cut to top-k.
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto better = [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
  order.resize(size_t(k));
  // Softmax at the temperature over the candidates (double for a stable cumulative sum).
  std::vector<double> p(order.size());
  const double top = logits[order[0]];
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i) sum += p[i] = std::exp((logits[order[i]] - top) / params_.temperature);
  // Nucleus: the smallest prefix whose mass reaches top_p.
  size_t keep = order.size();
  double mass = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    mass += p[i] / sum;
    if (mass >= params_.top_p) {
      keep = i + 1;
      break;
    }
  }
  const double kept = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  // A uniform draw in [0, kept) from the top 53 bits (std distributions differ between
  // standard libraries; this does not).
  const double u = double(rng_() >> 11) * 0x1.0p-53 * kept;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace dsq::model
