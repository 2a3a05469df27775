// ForwardPass: one forward call over a batch of sequences, exposed step by step, so that
// callers can run the model layer by layer. (The quantizer's calibration, which looks at
// the streams between layers, calls decoder_layer itself: see streams() below.)
//
//   ForwardPass pass(model, batch, observer);   // embeds the tokens into streams
//   for (int i = 0; i < L; ++i) pass.run_layer(i);  // in order; updates the states' layer i
//   Tensor logits = pass.logits(LogitRows::All);    // hc_head, final norm, head
//   pass.commit();                                  // advances every state's position
//
// run_layer(i) updates layer i of each sequence's state (window, compressor, indexer) as
// it goes; commit() must follow once all layers have run, before the states are used
// again. Model::forward does exactly this sequence.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "model/layer_blocks.h"
#include "model/model.h"

namespace dsq::model {

class ForwardPass {
 public:
  ForwardPass(const Model& model, std::vector<SequenceInput> batch, LinearObserver* observer = nullptr);

  int64_t num_tokens() const { return int64_t(ids_.tokens.size()); }
  // Absolute position and token id of each new token, in batch order.
  const std::vector<int64_t>& positions() const { return ids_.positions; }
  const std::vector<int64_t>& tokens() const { return ids_.tokens; }
  // First token of sequence b in batch order (size B + 1).
  const std::vector<int64_t>& sequence_offsets() const { return ids_.offsets; }

  // The residual streams, [num_tokens, N·H] f32 (stream-major per token), in the memory
  // of the model's ops (host memory for CpuOps): a workspace buffer, valid until the
  // model's next forward. Complete before the first layer and after the last one; in
  // between, a layer's last residual update is still pending (applied by the next layer).
  float* streams() { return streams_.mutable_data<float>(); }
  const float* streams() const { return streams_.data<float>(); }

  // Runs decoder layer `layer`; layers must run in order 0, 1, …
  void run_layer(int layer);
  int layers_done() const { return next_layer_; }
  // hc_head + final norm on the current streams: the head's input, f32 [rows, H], in
  // the ops' memory (a workspace buffer: valid until the model's next forward).
  Tensor final_hidden(LogitRows rows) const;
  // final_hidden followed by the head: f32 [rows, V], in host memory.
  Tensor logits(LogitRows rows) const;
  // Advances each sequence's position by its token count (all layers must have run).
  void commit();

 private:
  PassContext context() const;

  const Model& model_;
  std::vector<SequenceInput> batch_;
  LinearObserver* observer_;
  PassTokens ids_;
  Tensor streams_;
  PendingResidual pending_;
  int next_layer_ = 0;
  bool committed_ = false;
};

}  // namespace dsq::model
