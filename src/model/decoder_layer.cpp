// One decoder layer's two residual half-steps around the attention and MoE blocks
// (spec §2.3, mHC §2.4).
#include "model/layer_blocks.h"

namespace dsq::model {

void decoder_layer(const PassContext& ctx, int layer, const LayerWeights& w, const cpu::RopeFrequencies& rope,
                   float* streams) {
  const ModelConfig& c = ctx.config;
  backend::Ops& ops = ctx.ops;
  Workspace& ws = ctx.workspace;
  const int64_t T = ctx.num_tokens(), H = c.hidden_size, N = c.hc_mult;
  const float eps = float(c.rms_norm_eps), eps_hc = float(c.hc_eps);
  float* x = ws.f32("layer.x", T * H);
  float* y = ws.f32("layer.y", T * H);
  float* post = ws.f32("layer.post", T * N);
  float* comb = ws.f32("layer.comb", T * N * N);
  // X ← post ⊗ block(norm(collapse(X))) + combᵀ·X. A block may leave its output in two
  // parts, y and a returned y_extra (null: none), which mhc_post adds.
  auto half_step = [&](const HyperConnection& hc, const std::vector<float>& norm_weight, auto&& block) {
    ops.mhc_pre(streams, T, hc.fn.w, eps, ops.resident(hc.base), ops.resident(hc.scale), N, H, c.hc_sinkhorn_iters,
                eps_hc, ops.resident(norm_weight), eps, x, post, comb);
    const float* y_extra = block(x, y);
    ops.mhc_post(streams, post, comb, y, y_extra, T, N, H);
  };
  half_step(w.hc_attn, w.attn_norm,
            [&](const float* in, float* out) -> const float* {
              attention_block(ctx, layer, w.attn, rope, in, out);
              return nullptr;
            });
  half_step(w.hc_ffn, w.ffn_norm,
            [&](const float* in, float* out) { return moe_block(ctx, layer, w.ffn, in, out); });
}

}  // namespace dsq::model
