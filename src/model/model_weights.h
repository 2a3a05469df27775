// All DeepSeek-V4 weights, loaded once from a checkpoint with every shape checked against
// the config (spec §5). Linear weights are QuantizedMatrix in their stored format (see
// weight_format.h) and remember their native name for observers and messages; the small
// vectors (norm weights, sinks, position biases, router bias, mHC parameters) are
// upcast to f32 at load.
#pragma once

#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/quantized_matrix.h"

namespace dsq::model {

// A linear weight with its native name ("layers.3.attn.wq_a.weight").
struct Linear {
  std::string name;
  QuantizedMatrix w;
};

// fn [(2+N)·N, N·H] (f32, as a dense matrix for linear()), base [(2+N)·N], scale [3].
struct HyperConnection {
  Linear fn;
  std::vector<float> base, scale;
};

// One compressor (spec §2.7/§2.8): raw width = width (HCA) or 2·width (CSA overlap).
struct CompressorWeights {
  Linear wkv, wgate;         // [raw width, H]
  std::vector<float> ape;    // [rate, raw width]
  std::vector<float> norm;   // [width]
};

struct IndexerWeights {
  Linear wq_b;                 // [n_I·D_I, q_r]
  Linear weights_proj;         // [n_I, H]
  CompressorWeights compressor;
};

struct AttentionWeights {
  Linear wq_a, wq_b, wkv, wo_a, wo_b;
  std::vector<float> q_norm, kv_norm, sinks;
  CompressorWeights compressor;  // CSA / HCA only
  IndexerWeights indexer;        // CSA only
};

struct ExpertWeights {
  Linear w1, w2, w3;  // gate [F, H], down [H, F], up [F, H]
};

struct MoeWeights {
  Linear gate;                    // [E, H]
  std::vector<float> bias;        // [E], top-k layers
  std::vector<int64_t> tid2eid;   // [V, k_E], hash layers
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  HyperConnection hc_attn, hc_ffn;
  AttentionWeights attn;
  MoeWeights ffn;
};

struct ModelWeights {
  QuantizedMatrix embed;  // [V, H]
  Linear head;            // [V, H]
  std::vector<float> norm;
  Linear hc_head_fn;      // [N, N·H]
  std::vector<float> hc_head_base;  // [N]
  float hc_head_scale = 1.0f;
  std::vector<LayerWeights> layers;

  static ModelWeights load(const Checkpoint& ckpt);
};

}  // namespace dsq::model
