// One decoder layer's two residual half-steps around the attention and MoE blocks
// (spec §2.3, mHC §2.4).
#include "backend/cpu/linear.h"
#include "backend/cpu/mhc.h"
#include "backend/cpu/rms_norm.h"
#include "core/thread_pool.h"
#include "model/layer_blocks.h"

namespace dsq::model {

void decoder_layer(const PassContext& ctx, int layer, const LayerWeights& w, const cpu::RopeFrequencies& rope,
                   float* streams) {
  const ModelConfig& c = ctx.config;
  const int64_t T = ctx.num_tokens(), H = c.hidden_size, N = c.hc_mult, NH = N * H, n_mix = (2 + N) * N;
  const float eps = float(c.rms_norm_eps), eps_hc = float(c.hc_eps);
  std::vector<float> normed(size_t(T * NH)), mix(size_t(T * n_mix)), x(size_t(T * H)), y(size_t(T * H));
  std::vector<float> pre(size_t(T * N)), post(size_t(T * N)), comb(size_t(T * N * N));
  // X ← post ⊗ block(norm(collapse(X))) + combᵀ·X
  auto half_step = [&](const HyperConnection& hc, const std::vector<float>& norm_weight, auto&& block) {
    cpu::rms_norm(streams, T, NH, NH, nullptr, eps, normed.data());
    cpu::linear(normed.data(), T, hc.fn.w, mix.data());
    parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        cpu::mhc_coefficients(mix.data() + t * n_mix, hc.base.data(), hc.scale.data(), N, c.hc_sinkhorn_iters,
                              eps_hc, pre.data() + t * N, post.data() + t * N, comb.data() + t * N * N);
        cpu::mhc_collapse(streams + t * NH, pre.data() + t * N, N, H, x.data() + t * H);
      }
    });
    cpu::rms_norm(x.data(), T, H, H, norm_weight.data(), eps, x.data());
    block(x.data(), y.data());
    parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        cpu::mhc_update(streams + t * NH, post.data() + t * N, comb.data() + t * N * N, y.data() + t * H, N, H);
    });
  };
  half_step(w.hc_attn, w.attn_norm,
            [&](const float* in, float* out) { attention_block(ctx, layer, w.attn, rope, in, out); });
  half_step(w.hc_ffn, w.ffn_norm, [&](const float* in, float* out) { moe_block(ctx, layer, w.ffn, in, out); });
}

}  // namespace dsq::model
