// The MoE block of one layer over a batch (spec §2.11): route every token (hash table or
// bias-corrected top-k), run the routed experts (ops.moe_experts: each expert once on the
// tokens sent to it, weighted and combined), and the shared expert beside them. The shared
// expert depends on nothing the routing computes, so it is side work (ops.h): on a GPU it
// runs concurrently with the routed path, whose chain of small launches at decode leaves
// memory bandwidth unused.
#include <optional>
#include <string>

#include "core/error.h"
#include "model/layer_blocks.h"

namespace dsq::model {

namespace {

// Reports the routed experts' inputs to a linear observer under their weight names.
class ExpertObserverTap final : public backend::ExpertInputTap {
 public:
  ExpertObserverTap(LinearObserver& observer, const MoeWeights& w) : observer_(observer), w_(w) {}
  void on_expert_input(int64_t expert, int which, const float* rows, int64_t n_rows, int64_t cols) override {
    const ExpertWeights& e = w_.experts[size_t(expert)];
    for (const Linear* l : which == 0 ? std::vector<const Linear*>{&e.w1, &e.w3} : std::vector<const Linear*>{&e.w2})
      observer_.on_linear({l->name, rows, n_rows, cols, 0, l->w.rows});
  }

 private:
  LinearObserver& observer_;
  const MoeWeights& w_;
};

}  // namespace

const float* moe_block(const PassContext& ctx, int layer, const MoeWeights& w, const float* x, float* out) {
  const ModelConfig& c = ctx.config;
  backend::Ops& ops = ctx.ops;
  Workspace& ws = ctx.workspace;
  const int64_t T = ctx.num_tokens(), H = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;

  const int64_t F = w.shared.w1.w.rows;
  float* logits = ws.f32("moe.logits", T * E);
  float* gate = ws.f32("moe.shared_gate", T * F);
  float* up = ws.f32("moe.shared_up", T * F);
  float* shared = ws.f32("moe.shared_out", T * H);
  int64_t* chosen = ws.i64("moe.chosen", T * k);
  float* weights = ws.f32("moe.weights", T * k);

  // Shared expert: W2 · (SiLU(min(W1·x, λ)) ⊙ clamp(W3·x, −λ, λ)), ready after the wait
  // below.
  ops.start_side_work();
  run_linears(ctx, x, T, {{&w.shared.w1, gate}, {&w.shared.w3, up}});
  ops.swiglu(gate, up, T * F, float(c.swiglu_limit), gate);
  run_linear(ctx, w.shared.w2, gate, T, shared);
  ops.end_side_work();

  run_linear(ctx, w.gate, x, T, logits);
  const bool hash = c.moe[layer] == MoeKind::Hash;
  ops.route(logits, T, E, hash ? nullptr : ops.resident(w.bias), hash ? ops.resident(w.tid2eid) : nullptr,
            ctx.ids.tokens_dev, c.vocab_size, k, float(c.routed_scaling_factor), chosen, weights);

  std::vector<backend::ExpertLinears> experts;
  experts.reserve(w.experts.size());
  for (const ExpertWeights& e : w.experts) experts.push_back({&e.w1.w, &e.w3.w, &e.w2.w});
  std::optional<ExpertObserverTap> tap;
  if (ctx.observer) tap.emplace(*ctx.observer, w);
  ops.moe_experts(x, T, H, experts.data(), E, chosen, weights, k, float(c.swiglu_limit), out,
                  tap ? &*tap : nullptr);
  ops.wait_side_work();
  return shared;
}

}  // namespace dsq::model
