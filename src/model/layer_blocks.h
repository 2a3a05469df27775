// The blocks of one decoder layer (internal to model/): attention (§2.5–§2.10) with the
// compressors' state update (§2.7, §2.8, §3.2), and the MoE (§2.11). They work on all
// tokens of a ForwardPass at once through backend::Ops; per-sequence work (attention
// keys, compressor state) loops over the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cpu/rope.h"
#include "backend/ops.h"
#include "model/linear_observer.h"
#include "model/model.h"
#include "model/model_weights.h"
#include "model/sequence_state.h"
#include "model/workspace.h"

namespace dsq::model {

// The per-token ids of a batch in host vectors and in the ops' memory (a workspace
// buffer, valid until the model's next forward), for a PassContext. Throws for a token id
// outside [0, vocab_size).
struct PassTokens {
  std::vector<int64_t> tokens, positions;
  std::vector<int64_t> offsets;  // first token of each sequence, size B + 1
  const int64_t* tokens_dev = nullptr;
  const int64_t* positions_dev = nullptr;
  PassTokens(backend::Ops& ops, Workspace& workspace, const std::vector<SequenceInput>& batch, int64_t vocab_size);
};

// What the blocks need to know about the call: the ids' host vectors plan the work, their
// device copies feed the kernels.
struct PassContext {
  const ModelConfig& config;
  backend::Ops& ops;
  Workspace& workspace;
  const std::vector<SequenceInput>& batch;
  const PassTokens& ids;
  LinearObserver* observer;  // host memory only (CpuOps)
  int64_t num_tokens() const { return int64_t(ids.tokens.size()); }
};

// y[n, rows] = x[n, cols]·Wᵀ, reporting the input to the observer first.
void run_linear(const PassContext& ctx, const Linear& w, const float* x, int64_t n, float* y);

// Several linears of the same input x [n, cols] (y_i = x·W_iᵀ) as one ops.linear_many,
// each reported to the observer first.
struct LinearTarget {
  const Linear* w;
  float* y;
};
void run_linears(const PassContext& ctx, const float* x, int64_t n, const std::vector<LinearTarget>& targets);

// A residual update X ← post ⊗ (y + y_extra) + combᵀ·X not yet applied to the streams:
// a layer's last one, handed to the next layer, whose first mixing applies it in the same
// op (Ops::mhc_post_pre: one launch less per layer on a GPU). The pointers are workspace
// buffers that stay valid until the next layer's first op has read them.
struct PendingResidual {
  const float* y = nullptr;  // null: nothing pending
  const float* y_extra = nullptr;
  const float* post = nullptr;
  const float* comb = nullptr;
};

// One whole decoder layer (spec §2.3) on the residual streams [T, N·H], in place, with
// the given weights (the model's own, or a quantizer's replacement for the layer):
// X ← post ⊗ attention(norm(collapse(X))) + combᵀ·X, then the same with the MoE.
// Updates layer `layer` of each sequence's state. ForwardPass::run_layer is this call.
// With `pending` null the streams are complete on return. Otherwise the update in
// *pending (if any) is applied first and the layer's own last update is left in
// *pending instead of applied: finish_residual() applies it.
void decoder_layer(const PassContext& ctx, int layer, const LayerWeights& w, const cpu::RopeFrequencies& rope,
                   float* streams, PendingResidual* pending = nullptr);
// Applies and clears *pending.
void finish_residual(const PassContext& ctx, float* streams, PendingResidual& pending);

// Both blocks join all side work (ops.h) before they return, also the side work their
// caller started before them (decoder_layer's mixing coefficients).
// x: [T, H] normalised attention input; out: [T, H].
void attention_block(const PassContext& ctx, int layer, const AttentionWeights& w,
                     const cpu::RopeFrequencies& rope, const float* x, float* out);

// x: [T, H] normalised ffn input. The block's output is out [T, H] (the routed experts'
// sum) plus the returned [T, H] (the shared expert's, a workspace buffer): the caller
// adds them (mhc_post does, in the same pass as the residual update).
const float* moe_block(const PassContext& ctx, int layer, const MoeWeights& w, const float* x, float* out);

}  // namespace dsq::model
