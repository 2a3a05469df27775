#include "backend/cpu/router.h"

#include <cmath>
#include <vector>

#include "backend/cpu/topk.h"
#include "core/error.h"

namespace dsq::cpu {

namespace {

float sqrt_softplus(float x) { return std::sqrt(x > 20.0f ? x : std::log1p(std::exp(x))); }

void weigh(const float* logits, const int64_t* experts, int64_t k, float scaling, float* weights) {
  float sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    weights[j] = sqrt_softplus(logits[experts[j]]);
    sum += weights[j];
  }
  for (int64_t j = 0; j < k; ++j) weights[j] = weights[j] / (sum + 1e-20f) * scaling;
}

}  // namespace

void route_topk(const float* logits, int64_t n_experts, const float* bias, int64_t k, float scaling,
                int64_t* experts, float* weights) {
  std::vector<float> choice(static_cast<size_t>(n_experts));
  for (int64_t e = 0; e < n_experts; ++e) choice[e] = sqrt_softplus(logits[e]) + (bias ? bias[e] : 0.0f);
  const std::vector<int64_t> picked = topk_indices(choice.data(), n_experts, k);
  for (int64_t j = 0; j < k; ++j) experts[j] = picked[j];
  weigh(logits, experts, k, scaling, weights);
}

void route_hash(const float* logits, int64_t n_experts, const int64_t* experts_in, int64_t k,
                float scaling, int64_t* experts, float* weights) {
  for (int64_t j = 0; j < k; ++j) {
    DSQ_CHECK(experts_in[j] >= 0 && experts_in[j] < n_experts, "hash routing: expert id ", experts_in[j],
              " outside [0, ", n_experts, ")");
    experts[j] = experts_in[j];
  }
  weigh(logits, experts, k, scaling, weights);
}

}  // namespace dsq::cpu
