// MoE routing (spec §2.11). Scores are s[e] = sqrt(softplus(logit[e])) (torch's softplus
// returns x itself above 20). A top-k layer selects by s + bias (bias for selection only,
// torch's top-k tie rule); a hash layer takes its experts from tid2eid[token]. Both
// weight the chosen experts by the UNBIASED scores: w = s / (Σ s_chosen + 1e-20) · γ.
#pragma once

#include <cstdint>

namespace dsq::cpu {

// logits: [n_experts]; bias: [n_experts] or null. Writes k expert ids and weights.
void route_topk(const float* logits, int64_t n_experts, const float* bias, int64_t k, float scaling,
                int64_t* experts, float* weights);

// experts_in: the k ids of tid2eid[token] (checked against n_experts).
void route_hash(const float* logits, int64_t n_experts, const int64_t* experts_in, int64_t k,
                float scaling, int64_t* experts, float* weights);

}  // namespace dsq::cpu
