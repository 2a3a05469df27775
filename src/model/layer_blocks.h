// The blocks of one decoder layer (internal to model/): attention (§2.5–§2.10), the
// compressors' state update (§2.7, §2.8, §3.2) and the MoE (§2.11). They work on all
// tokens of a ForwardPass at once; per-sequence work (attention keys, compressor state)
// loops over the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cpu/rope.h"
#include "model/linear_observer.h"
#include "model/model.h"
#include "model/model_weights.h"
#include "model/sequence_state.h"

namespace dsq::model {

// What the blocks need to know about the call.
struct PassContext {
  const ModelConfig& config;
  const std::vector<SequenceInput>& batch;
  const std::vector<int64_t>& offsets;    // first token of each sequence, size B + 1
  const std::vector<int64_t>& positions;  // per token
  const std::vector<int64_t>& tokens;     // per token
  LinearObserver* observer;
  int64_t num_tokens() const { return int64_t(tokens.size()); }
};

// y[n, rows] = x[n, cols]·Wᵀ, reporting the input to the observer first.
void run_linear(const PassContext& ctx, const Linear& w, const float* x, int64_t n, float* y);

// One whole decoder layer (spec §2.3) on the residual streams [T, N·H], in place, with
// the given weights (the model's own, or a quantizer's replacement for the layer):
// X ← post ⊗ attention(norm(collapse(X))) + combᵀ·X, then the same with the MoE.
// Updates layer `layer` of each sequence's state. ForwardPass::run_layer is this call.
void decoder_layer(const PassContext& ctx, int layer, const LayerWeights& w, const cpu::RopeFrequencies& rope,
                   float* streams);

// x: [T, H] normalised attention input; out: [T, H].
void attention_block(const PassContext& ctx, int layer, const AttentionWeights& w,
                     const cpu::RopeFrequencies& rope, const float* x, float* out);

// x: [T, H] normalised ffn input; out: [T, H].
void moe_block(const PassContext& ctx, int layer, const MoeWeights& w, const float* x, float* out);

// Appends the S new tokens' raw projections kv, gate ([S, raw width] each) to a compressor
// and closes every complete window into a finished entry (pooled, normalised, rotated at
// its first position). `overlap` selects the CSA scheme (raw width = 2·width).
void compress_tokens(CompressorState& state, const CompressorWeights& w, bool overlap, int64_t rate,
                     int64_t width, const float* kv, const float* gate, int64_t S,
                     const cpu::RopeFrequencies& rope, float eps);

}  // namespace dsq::model
