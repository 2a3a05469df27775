// The incremental decoding state of one sequence (spec §3.1): everything a later call
// needs from the tokens already consumed, per layer. A fresh state is empty (position 0);
// a stateless forward is one call on a fresh state. It is a plain value: copying it is a
// snapshot (e.g. to roll back rejected speculative tokens, spec §6).
#pragma once

#include <cstdint>
#include <vector>

#include "formats/model_config.h"

namespace dsq::model {

// One compressor's state (the main compressor of a CSA/HCA layer, or the indexer's).
struct CompressorState {
  // Raw projections (kv, gate without position bias) of the tokens after the last closed
  // window: `buffered` rows of the raw width (< rate rows).
  std::vector<float> buffer_kv, buffer_gate;
  int64_t buffered = 0;
  // Finished entries C_0 … C_{count−1} (normalised and rotated), `width` floats each.
  std::vector<float> entries;
  int64_t count = 0;
  // CSA: the Ca half of the last closed window, kv and gate with the position bias
  // already added, [rate, width] each; empty until a window has closed.
  std::vector<float> overlap_kv, overlap_gate;
};

struct LayerState {
  // The last min(position, W−1) keys (normalised, rotated), head_dim floats each.
  std::vector<float> window;
  int64_t window_rows = 0;
  CompressorState compressor;  // CSA / HCA
  CompressorState indexer;     // CSA
};

struct SequenceState {
  int64_t position = 0;  // tokens consumed so far (= p0 of the next call)
  std::vector<LayerState> layers;

  explicit SequenceState(const ModelConfig& config) : layers(size_t(config.num_layers)) {}
};

}  // namespace dsq::model
