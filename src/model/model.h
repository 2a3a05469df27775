// dsq::model::Model: a DeepSeek-V4 checkpoint loaded for inference on a backend (CpuOps
// unless told otherwise), and the forward pass over a batch of sequences, each with its
// own decoding state.
//
// Usage:
//   Model m = Model::load("models/tiny-a");
//   SequenceState s = m.new_sequence();
//   Tensor logits = m.forward({{&s, prompt}});      // prefill: [len, V]
//   const int64_t step[] = {token};
//   Tensor next = m.forward({{&s, step}});          // one decode step: [1, V]
// A prompt gives the same logits whether it is fed whole, in chunks or token by token
// (spec §3.3). Several sequences in one call share the linear layers (one GEMM over all
// their tokens) and keep separate attention state.
//
// For layer-by-layer work (quantizer calibration), use ForwardPass (forward_pass.h).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/rope.h"
#include "backend/ops.h"
#include "core/tensor.h"
#include "formats/checkpoint.h"
#include "model/linear_observer.h"
#include "model/model_weights.h"
#include "model/sequence_state.h"
#include "model/workspace.h"

namespace dsq::model {

// New tokens of one sequence for one call; the span must outlive the call.
struct SequenceInput {
  SequenceState* state;
  std::span<const int64_t> tokens;
};

// Which rows of logits a call returns.
enum class LogitRows {
  All,   // every new token of every sequence, in batch order: [Σ S_b, V]
  Last,  // the last new token of each sequence: [B, V]
};

class Model {
 public:
  // `ops` runs the forward (null: the CPU reference). Weights stay host objects; the ops
  // keep their own device copies (backend/ops.h).
  static Model load(const std::string& dir, std::shared_ptr<backend::Ops> ops = nullptr);
  explicit Model(Checkpoint checkpoint, std::shared_ptr<backend::Ops> ops = nullptr);

  const ModelConfig& config() const { return checkpoint_.config(); }
  const Checkpoint& checkpoint() const { return checkpoint_; }
  const ModelWeights& weights() const { return weights_; }
  // The RoPE table of a layer: main for sliding layers, compress for CSA/HCA (spec §1.4).
  const cpu::RopeFrequencies& rope_for_layer(int layer) const;

  SequenceState new_sequence() const { return SequenceState(config()); }

  backend::Ops& ops() const { return *ops_; }
  // The forward's reusable temporary buffers (one forward at a time per model).
  Workspace& workspace() const { return *workspace_; }

  // Runs every layer over the batch, advances each state and returns f32 logits.
  Tensor forward(const std::vector<SequenceInput>& batch, LogitRows rows = LogitRows::All,
                 LinearObserver* observer = nullptr) const;

 private:
  Checkpoint checkpoint_;
  ModelWeights weights_;
  std::shared_ptr<backend::Ops> ops_;
  std::unique_ptr<Workspace> workspace_;
  cpu::RopeFrequencies rope_main_, rope_compress_;
};

}  // namespace dsq::model
