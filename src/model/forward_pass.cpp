#include "model/forward_pass.h"

#include <cstring>

#include "backend/cpu/embedding.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/mhc.h"
#include "backend/cpu/rms_norm.h"
#include "core/error.h"
#include "model/layer_blocks.h"

namespace dsq::model {

void run_linear(const PassContext& ctx, const Linear& w, const float* x, int64_t n, float* y) {
  if (ctx.observer && n > 0) ctx.observer->on_linear({w.name, x, n, w.w.cols, 0, w.w.rows});
  cpu::linear(x, n, w.w, y);
}

ForwardPass::ForwardPass(const Model& model, std::vector<SequenceInput> batch, LinearObserver* observer)
    : model_(model), batch_(std::move(batch)), observer_(observer) {
  const ModelConfig& c = model_.config();
  offsets_.push_back(0);
  for (const SequenceInput& in : batch_) {
    DSQ_CHECK(in.state != nullptr, "forward: a batch entry has no sequence state");
    DSQ_CHECK(int64_t(in.state->layers.size()) == c.num_layers, "forward: sequence state has ",
              in.state->layers.size(), " layers, the model ", c.num_layers);
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      tokens_.push_back(in.tokens[i]);
      positions_.push_back(in.state->position + int64_t(i));
    }
    offsets_.push_back(int64_t(tokens_.size()));
  }
  // Embedding, copied into each of the N streams.
  const int64_t T = num_tokens(), H = c.hidden_size, N = c.hc_mult;
  std::vector<float> embedded(size_t(T * H));
  cpu::embedding(model_.weights().embed, tokens_.data(), T, embedded.data());
  streams_.resize(size_t(T * N * H));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < N; ++j)
      std::memcpy(streams_.data() + (t * N + j) * H, embedded.data() + t * H, H * sizeof(float));
}

void ForwardPass::run_layer(int layer) {
  DSQ_CHECK(layer == next_layer_, "forward: layer ", layer, " run out of order (next is ", next_layer_, ")");
  DSQ_CHECK(!committed_, "forward: run_layer after commit");
  const PassContext ctx{model_.config(), batch_, offsets_, positions_, tokens_, observer_};
  decoder_layer(ctx, layer, model_.weights().layers[size_t(layer)], model_.rope_for_layer(layer), streams_.data());
  ++next_layer_;
}

Tensor ForwardPass::final_hidden(LogitRows rows) const {
  const ModelConfig& c = model_.config();
  DSQ_CHECK(next_layer_ == c.num_layers, "forward: output requested after ", next_layer_, " of ",
            c.num_layers, " layers");
  const ModelWeights& w = model_.weights();
  const int64_t H = c.hidden_size, N = c.hc_mult, NH = N * H;
  std::vector<int64_t> picked;
  if (rows == LogitRows::All) {
    for (int64_t t = 0; t < num_tokens(); ++t) picked.push_back(t);
  } else {
    for (size_t b = 0; b + 1 < offsets_.size(); ++b) {
      DSQ_CHECK(offsets_[b + 1] > offsets_[b], "forward: sequence ", b, " has no new token to take logits of");
      picked.push_back(offsets_[b + 1] - 1);
    }
  }
  const int64_t n = int64_t(picked.size());
  std::vector<float> u(size_t(n * NH)), mix(size_t(n * N));
  Tensor hidden = Tensor::zeros(DType::F32, {n, H});
  float* h = hidden.mutable_data<float>();
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(u.data() + i * NH, streams_.data() + picked[i] * NH, NH * sizeof(float));
  cpu::rms_norm(u.data(), n, NH, NH, nullptr, float(c.rms_norm_eps), u.data());
  cpu::linear(u.data(), n, w.hc_head_fn.w, mix.data());
  for (int64_t i = 0; i < n; ++i) {
    float pre[64];
    DSQ_CHECK(N <= 64, "hc_mult ", N, " too large");
    cpu::hc_head_weights(mix.data() + i * N, w.hc_head_base.data(), w.hc_head_scale, N, float(c.hc_eps), pre);
    cpu::mhc_collapse(streams_.data() + picked[i] * NH, pre, N, H, h + i * H);
  }
  cpu::rms_norm(h, n, H, H, w.norm.data(), float(c.rms_norm_eps), h);
  return hidden;
}

Tensor ForwardPass::logits(LogitRows rows) const {
  const Tensor hidden = final_hidden(rows);
  const int64_t n = hidden.dim(0);
  Tensor out = Tensor::zeros(DType::F32, {n, model_.config().vocab_size});
  const PassContext ctx{model_.config(), batch_, offsets_, positions_, tokens_, observer_};
  run_linear(ctx, model_.weights().head, hidden.data<float>(), n, out.mutable_data<float>());
  return out;
}

void ForwardPass::commit() {
  DSQ_CHECK(next_layer_ == model_.config().num_layers, "forward: commit after ", next_layer_, " of ",
            model_.config().num_layers, " layers");
  DSQ_CHECK(!committed_, "forward: committed twice");
  for (size_t b = 0; b < batch_.size(); ++b) batch_[b].state->position += offsets_[b + 1] - offsets_[b];
  committed_ = true;
}

}  // namespace dsq::model
