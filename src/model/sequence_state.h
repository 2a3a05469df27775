// The incremental decoding state of one sequence (spec §3.1): everything a later call
// needs from the tokens already consumed, per layer, in the memory of the ops the model
// runs on, laid out as backend/ops.h describes (window ring, compressor raw-row rings,
// compressed entries). A fresh state is empty (position 0, buffers allocated on first
// use); a stateless forward is one call on a fresh state. How many rows of each buffer
// are valid follows from `position` alone.
//
// Copying a SequenceState shares its buffers (tensors are shared handles): it is not a
// snapshot.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "formats/model_config.h"

namespace dsq::model {

// One compressor's state (the main compressor of a CSA/HCA layer, or the indexer's).
struct CompressorState {
  Tensor ring_kv, ring_gate;  // [2m, raw width]: raw rows of the last 2m positions
  Tensor entries;             // [capacity, width]: the first ⌊position/m⌋ rows are valid
};

struct LayerState {
  Tensor window;              // [W−1, head_dim] ring of normalised, rotated keys
  CompressorState compressor;  // CSA / HCA
  CompressorState indexer;     // CSA
};

struct SequenceState {
  int64_t position = 0;  // tokens consumed so far (= p0 of the next call)
  std::vector<LayerState> layers;

  explicit SequenceState(const ModelConfig& config) : layers(size_t(config.num_layers)) {}
};

}  // namespace dsq::model
