// ModelConfig: a DeepSeek-V4 config.json read from either spelling (transformers 5.17's
// `layer_types`/`mlp_layer_types`/`compress_rates`/`rope_parameters`, or the DeepSeek
// release's `compress_ratios`/`num_hash_layers`/`qk_rope_head_dim`/`rope_scaling`), see
// shared/docs/dsv4-architecture.md §1. Field names follow the spec's symbols.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsq {

enum class AttentionKind { Sliding, CSA, HCA };
enum class MoeKind { Hash, TopK };

std::string_view attention_kind_name(AttentionKind k);  // "sliding" / "csa" / "hca"

struct RopeParams {
  std::string type = "default";  // "default" or "yarn"
  double theta = 10000.0;
  double factor = 1.0;                  // YaRN scale s
  int64_t original_max_positions = 0;   // YaRN P0
  double beta_fast = 32.0, beta_slow = 1.0;

  bool operator==(const RopeParams&) const = default;
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;          // H
  int64_t num_layers = 0;           // L (MTP excluded)
  int64_t num_heads = 0;            // n_h
  int64_t head_dim = 0;             // D
  int64_t rope_dim = 0;             // r: trailing rotary dims of each head
  int64_t q_lora_rank = 0;          // q_r
  int64_t o_groups = 0;             // G
  int64_t o_lora_rank = 0;          // R
  int64_t sliding_window = 0;       // W (counts the current token)
  std::vector<AttentionKind> attention;  // per layer, size L
  std::vector<MoeKind> moe;              // per layer, size L
  int64_t csa_rate = 4;             // m_c
  int64_t hca_rate = 128;           // m_h
  RopeParams rope_main, rope_compress;
  int64_t index_n_heads = 0, index_head_dim = 0, index_topk = 0;  // n_I, D_I, k_I
  int64_t n_routed_experts = 0;     // E
  int64_t num_experts_per_tok = 0;  // k_E
  int64_t n_shared_experts = 1;
  int64_t moe_intermediate_size = 0;  // F
  std::string scoring_func = "sqrtsoftplus";
  double routed_scaling_factor = 1.0;  // gamma
  double swiglu_limit = 0.0;           // lambda (0: no clamp)
  int64_t hc_mult = 4;                 // N
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;
  int64_t num_mtp_layers = 0;
  int64_t max_position_embeddings = 0;
  int64_t bos_token_id = 0, eos_token_id = 1;
  bool tie_word_embeddings = false;

  // The config.json as read, so writers can keep every original key.
  nlohmann::json raw;

  // Parses either spelling; `source` names the file in error messages. Missing or
  // inconsistent fields throw dsq::Error("<source>: <field>: <problem>").
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  // Reads <dir>/config.json (or the file itself).
  static ModelConfig load(const std::string& path);

  int64_t compress_rate(int layer) const;  // 0 for sliding layers
  const RopeParams& rope_for(int layer) const;

  // The release spelling (compress_ratios, num_hash_layers, qk_rope_head_dim, rope_scaling),
  // built on top of `raw` so unrelated keys survive.
  nlohmann::json to_release_json() const;
};

}  // namespace dsq
