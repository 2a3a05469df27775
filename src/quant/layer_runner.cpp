// LayerRunner: one decoder layer over all calibration batches (see layer_runner.h).
#include "quant/layer_runner.h"

#include <cstring>

#include "backend/cpu/linear.h"
#include "backend/cpu/mhc.h"
#include "backend/cpu/rms_norm.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/forward_pass.h"
#include "model/layer_blocks.h"

namespace dsq::quant {

LayerRunner::LayerRunner(const model::Model& model, std::vector<std::vector<int64_t>> samples, int64_t batch_tokens)
    : model_(model), samples_(std::move(samples)) {
  DSQ_CHECK(!samples_.empty(), "calibration: no samples");
  Batch b;
  for (size_t s = 0; s < samples_.size(); ++s) {
    DSQ_CHECK(!samples_[s].empty(), "calibration: sample ", s, " is empty");
    if (b.num_samples > 0 && b.num_tokens + int64_t(samples_[s].size()) > batch_tokens) {
      batches_.push_back(b);
      b = Batch{s, 0, total_tokens_, 0};
    }
    ++b.num_samples;
    b.num_tokens += int64_t(samples_[s].size());
    total_tokens_ += int64_t(samples_[s].size());
  }
  batches_.push_back(b);
}

int64_t LayerRunner::stream_width() const { return model_.config().hc_mult * model_.config().hidden_size; }

void LayerRunner::embed() {
  const int64_t NH = stream_width();
  streams_.assign(size_t(total_tokens_ * NH), 0.0f);
  for (const Batch& b : batches_) {
    std::vector<model::SequenceState> states;
    std::vector<model::SequenceInput> inputs;
    states.reserve(b.num_samples);
    for (size_t s = 0; s < b.num_samples; ++s) states.push_back(model_.new_sequence());
    for (size_t s = 0; s < b.num_samples; ++s) inputs.push_back({&states[s], samples_[b.first_sample + s]});
    // ForwardPass's constructor is the model's embedding step (lookup, copied into N streams).
    const model::ForwardPass pass(model_, inputs);
    std::memcpy(streams_.data() + b.first_token * NH, pass.streams(), sizeof(float) * b.num_tokens * NH);
  }
}

void LayerRunner::run_layer(int layer, const model::LayerWeights& w, model::LinearObserver* observer) {
  const ModelConfig& c = model_.config();
  DSQ_CHECK(int64_t(streams_.size()) == total_tokens_ * stream_width(), "calibration: streams not initialised");
  const int64_t H = c.hidden_size, N = c.hc_mult, NH = N * H, n_mix = (2 + N) * N;
  const float eps = float(c.rms_norm_eps), eps_hc = float(c.hc_eps);
  for (const Batch& b : batches_) {
    std::vector<model::SequenceState> states;
    std::vector<model::SequenceInput> batch;
    std::vector<int64_t> offsets{0}, positions, tokens;
    states.reserve(b.num_samples);
    for (size_t s = 0; s < b.num_samples; ++s) states.push_back(model_.new_sequence());
    for (size_t s = 0; s < b.num_samples; ++s) {
      const std::vector<int64_t>& ids = samples_[b.first_sample + s];
      batch.push_back({&states[s], ids});
      for (size_t i = 0; i < ids.size(); ++i) {
        tokens.push_back(ids[i]);
        positions.push_back(int64_t(i));
      }
      offsets.push_back(int64_t(tokens.size()));
    }
    const model::PassContext ctx{c, batch, offsets, positions, tokens, observer};
    const int64_t T = b.num_tokens;
    float* streams = streams_.data() + b.first_token * NH;
    std::vector<float> normed(size_t(T * NH)), mix(size_t(T * n_mix)), x(size_t(T * H)), y(size_t(T * H));
    std::vector<float> pre(size_t(T * N)), post(size_t(T * N)), comb(size_t(T * N * N));
    // The residual half-step of ForwardPass::run_layer (spec §2.3).
    auto half_step = [&](const model::HyperConnection& hc, const std::vector<float>& norm_weight, auto&& block) {
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
    half_step(w.hc_attn, w.attn_norm, [&](const float* in, float* out) {
      model::attention_block(ctx, layer, w.attn, model_.rope_for_layer(layer), in, out);
    });
    half_step(w.hc_ffn, w.ffn_norm, [&](const float* in, float* out) { model::moe_block(ctx, layer, w.ffn, in, out); });
  }
}

}  // namespace dsq::quant
