// LayerRunner: one decoder layer over all calibration batches (see layer_runner.h).
#include "quant/layer_runner.h"

#include <cstring>

#include "core/error.h"
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

LayerRunner::FreshBatch LayerRunner::fresh_batch(const Batch& b) const {
  FreshBatch f;
  f.states.reserve(b.num_samples);
  for (size_t s = 0; s < b.num_samples; ++s) f.states.push_back(model_.new_sequence());
  for (size_t s = 0; s < b.num_samples; ++s) f.inputs.push_back({&f.states[s], samples_[b.first_sample + s]});
  return f;
}

int64_t LayerRunner::stream_width() const { return model_.config().hc_mult * model_.config().hidden_size; }

void LayerRunner::embed() {
  const int64_t NH = stream_width();
  streams_.assign(size_t(total_tokens_ * NH), 0.0f);
  for (const Batch& b : batches_) {
    const FreshBatch fresh = fresh_batch(b);
    // ForwardPass's constructor is the model's embedding step (lookup, copied into N streams).
    const model::ForwardPass pass(model_, fresh.inputs);
    std::memcpy(streams_.data() + b.first_token * NH, pass.streams(), sizeof(float) * b.num_tokens * NH);
  }
}

void LayerRunner::run_layer(int layer, const model::LayerWeights& w, model::LinearObserver* observer) {
  const ModelConfig& c = model_.config();
  DSQ_CHECK(int64_t(streams_.size()) == total_tokens_ * stream_width(), "calibration: streams not initialised");
  const int64_t NH = stream_width();
  for (const Batch& b : batches_) {
    const FreshBatch fresh = fresh_batch(b);
    const std::vector<model::SequenceInput>& batch = fresh.inputs;
    const model::PassTokens ids(model_.ops(), model_.workspace(), batch, c.vocab_size);
    const model::PassContext ctx{.config = c,
                                 .ops = model_.ops(),
                                 .workspace = model_.workspace(),
                                 .batch = batch,
                                 .ids = ids,
                                 .observer = observer};
    model::decoder_layer(ctx, layer, w, model_.rope_for_layer(layer), streams_.data() + b.first_token * NH);
  }
}

}  // namespace dsq::quant
