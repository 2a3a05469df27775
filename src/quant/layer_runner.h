// Runs one decoder layer at a time over the whole calibration set, from residual streams
// the quantizer holds (and can save, restore and resume from), with any LayerWeights — the
// original ones for calibration, the quantized ones to produce the next layer's inputs.
//
// model::ForwardPass runs layers strictly in order from the embedding with the model's own
// weights, which rules out re-running layer i with quantized weights or resuming at layer
// k. So this runner keeps the streams itself and calls the model's own layer step,
// model::decoder_layer, with whichever weights it is given; a test checks it reproduces
// ForwardPass bit for bit on tiny-brown. Samples run in batches of sequences, each one
// stateless call from position 0 (the calibration forward has no cache).
#pragma once

#include <cstdint>
#include <vector>

#include "model/linear_observer.h"
#include "model/model.h"

namespace dsq::quant {

class LayerRunner {
 public:
  // `samples`: token ids of each calibration sequence; `batch_tokens`: about how many tokens
  // one batch of sequences holds (bounds the layer's temporaries).
  LayerRunner(const model::Model& model, std::vector<std::vector<int64_t>> samples, int64_t batch_tokens);

  int64_t num_tokens() const { return total_tokens_; }
  int64_t stream_width() const;  // N * H floats per token
  // The residual streams of every token of every sample, [num_tokens, N*H].
  std::vector<float>& streams() { return streams_; }
  const std::vector<float>& streams() const { return streams_; }
  const std::vector<std::vector<int64_t>>& samples() const { return samples_; }

  // Sets the streams to the embeddings (the input of layer 0).
  void embed();
  // Replaces the streams by layer `layer`'s output under `weights`; `observer` (may be null)
  // sees every linear input, batch by batch in sample order.
  void run_layer(int layer, const model::LayerWeights& weights, model::LinearObserver* observer);

 private:
  struct Batch {
    size_t first_sample = 0, num_samples = 0;
    int64_t first_token = 0, num_tokens = 0;
  };
  // A batch's samples as new sequences (fresh states; the inputs point into them).
  struct FreshBatch {
    std::vector<model::SequenceState> states;
    std::vector<model::SequenceInput> inputs;
  };
  FreshBatch fresh_batch(const Batch& b) const;

  const model::Model& model_;
  std::vector<std::vector<int64_t>> samples_;
  std::vector<Batch> batches_;
  int64_t total_tokens_ = 0;
  std::vector<float> streams_;
};

}  // namespace dsq::quant
