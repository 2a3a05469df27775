// One decoder layer's two residual half-steps around the attention and MoE blocks
// (spec §2.3, mHC §2.4).
#include "model/layer_blocks.h"

namespace dsq::model {

void decoder_layer(const PassContext& ctx, int layer, const LayerWeights& w, const cpu::RopeFrequencies& rope,
                   float* streams, PendingResidual* pending) {
  const ModelConfig& c = ctx.config;
  backend::Ops& ops = ctx.ops;
  Workspace& ws = ctx.workspace;
  const int64_t T = ctx.num_tokens(), H = c.hidden_size, N = c.hc_mult;
  const float eps = float(c.rms_norm_eps), eps_hc = float(c.hc_eps);
  float* x = ws.f32("layer.x", T * H);
  float* y = ws.f32("layer.y", T * H);
  PendingResidual local;
  PendingResidual& update = pending ? *pending : local;
  // X ← post ⊗ block(norm(collapse(X))) + combᵀ·X. A block may leave its output in two
  // parts, y and a returned y_extra (null: none). The block's input needs only pre; post
  // and comb (the Sinkhorn) are side work beside the block, which joins all side work
  // before it returns. The update is left pending and applied by the next half-step's
  // mixing; post and comb alternate between two buffers (by half-step parity) so that
  // the pending ones are not overwritten before they are read.
  auto half_step = [&](int parity, const HyperConnection& hc, const std::vector<float>& norm_weight, auto&& block) {
    float* post = ws.f32(parity ? "layer.post.1" : "layer.post.0", T * N);
    float* comb = ws.f32(parity ? "layer.comb.1" : "layer.comb.0", T * N * N);
    const float *base = ops.resident(hc.base), *scale = ops.resident(hc.scale);
    if (update.y)
      ops.mhc_post_pre(streams, update.post, update.comb, update.y, update.y_extra, T, hc.fn.w, eps, base, scale, N,
                       H, c.hc_sinkhorn_iters, eps_hc, ops.resident(norm_weight), eps, x, nullptr, nullptr);
    else
      ops.mhc_pre(streams, T, hc.fn.w, eps, base, scale, N, H, c.hc_sinkhorn_iters, eps_hc,
                  ops.resident(norm_weight), eps, x, nullptr, nullptr);
    ops.start_side_work();
    ops.mhc_coefficients(streams, T, hc.fn.w, eps, base, scale, N, H, c.hc_sinkhorn_iters, eps_hc, post, comb);
    ops.end_side_work();
    const float* y_extra = block(x, y);
    update = {y, y_extra, post, comb};
  };
  half_step(0, w.hc_attn, w.attn_norm,
            [&](const float* in, float* out) -> const float* {
              attention_block(ctx, layer, w.attn, rope, in, out);
              return nullptr;
            });
  half_step(1, w.hc_ffn, w.ffn_norm,
            [&](const float* in, float* out) { return moe_block(ctx, layer, w.ffn, in, out); });
  if (!pending) finish_residual(ctx, streams, local);
}

void finish_residual(const PassContext& ctx, float* streams, PendingResidual& pending) {
  if (!pending.y) return;
  const ModelConfig& c = ctx.config;
  ctx.ops.mhc_post(streams, pending.post, pending.comb, pending.y, pending.y_extra, ctx.num_tokens(), c.hc_mult,
                   c.hidden_size);
  pending = {};
}

}  // namespace dsq::model
