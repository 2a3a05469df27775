// The MoE block of one layer over a batch (spec §2.11): route every token (hash table or
// bias-corrected top-k), run each routed expert once on the tokens sent to it, weight and
// accumulate, then add the shared expert.
#include <algorithm>
#include <cstring>

#include "backend/cpu/linear.h"
#include "backend/cpu/router.h"
#include "backend/cpu/swiglu.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/layer_blocks.h"

namespace dsq::model {

namespace {

// Expert(x) for n rows: W2 · (SiLU(min(W1·x, λ)) ⊙ clamp(W3·x, −λ, λ)).
void run_expert(const PassContext& ctx, const ExpertWeights& e, const float* x, int64_t n, float* y) {
  const int64_t F = e.w1.w.rows;
  std::vector<float> gate(size_t(n * F)), up(size_t(n * F));
  run_linear(ctx, e.w1, x, n, gate.data());
  run_linear(ctx, e.w3, x, n, up.data());
  cpu::swiglu_clamped(gate.data(), up.data(), n * F, float(ctx.config.swiglu_limit), gate.data());
  run_linear(ctx, e.w2, gate.data(), n, y);
}

}  // namespace

void moe_block(const PassContext& ctx, int layer, const MoeWeights& w, const float* x, float* out) {
  const ModelConfig& c = ctx.config;
  const int64_t T = ctx.num_tokens(), H = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  const float gamma = float(c.routed_scaling_factor);

  std::vector<float> logits(size_t(T * E));
  run_linear(ctx, w.gate, x, T, logits.data());
  std::vector<int64_t> chosen(size_t(T * k));
  std::vector<float> weights(size_t(T * k));
  const bool hash = c.moe[layer] == MoeKind::Hash;
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (hash) {
        const int64_t id = ctx.tokens[t];
        DSQ_CHECK(id >= 0 && id < c.vocab_size, "token id ", id, " outside the vocabulary");
        cpu::route_hash(logits.data() + t * E, E, w.tid2eid.data() + id * k, k, gamma, chosen.data() + t * k,
                        weights.data() + t * k);
      } else {
        cpu::route_topk(logits.data() + t * E, E, w.bias.data(), k, gamma, chosen.data() + t * k,
                        weights.data() + t * k);
      }
    }
  });

  // Tokens (and their weights) per expert, in token order.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) routed[chosen[t * k + j]].push_back({t, weights[t * k + j]});

  std::fill(out, out + T * H, 0.0f);
  std::vector<float> xe, ye;
  for (int64_t e = 0; e < E; ++e) {
    const auto& rows = routed[size_t(e)];
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    xe.resize(size_t(n * H));
    ye.resize(size_t(n * H));
    parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(xe.data() + r * H, x + rows[r].first * H, H * sizeof(float));
    });
    run_expert(ctx, w.experts[size_t(e)], xe.data(), n, ye.data());
    // Each token appears once per expert, so rows write disjoint outputs.
    parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* o = out + rows[r].first * H;
        const float wt = rows[r].second;
        for (int64_t h = 0; h < H; ++h) o[h] += wt * ye[r * H + h];
      }
    });
  }
  std::vector<float> shared(size_t(T * H));
  run_expert(ctx, w.shared, x, T, shared.data());
  parallel_for(T * H, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] += shared[i];
  });
}

}  // namespace dsq::model
