// ModelConfig parsing (both spellings), validation and conversion to the release spelling;
// the field correspondences are shared/docs/dsv4-architecture.md §1.1-§1.3.
#include "formats/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace dsq {

using nlohmann::json;

namespace {

constexpr const char* kSliding = "sliding_attention";
constexpr const char* kCsa = "compressed_sparse_attention";
constexpr const char* kHca = "heavily_compressed_attention";
constexpr const char* kHashMoe = "hash_moe";
constexpr const char* kTopKMoe = "moe";

// Reads fields of one config.json and reports problems as "<source>: <field>: <problem>".
class Fields {
 public:
  Fields(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  Error fail(const std::string& field, const std::string& problem) const {
    return error(source_, ": ", field, ": ", problem);
  }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const char* key) const { return j_[key]; }

  // The first of `keys` that is present (aliases); throws naming the first when none is.
  const char* pick(std::initializer_list<const char*> keys) const {
    for (const char* k : keys) {
      if (has(k)) return k;
    }
    throw fail(*keys.begin(), "missing");
  }
  int64_t integer(std::initializer_list<const char*> keys) const { return as_integer(at(pick(keys)), pick(keys)); }
  int64_t integer_or(const char* key, int64_t fallback) const { return has(key) ? as_integer(at(key), key) : fallback; }
  int64_t positive(std::initializer_list<const char*> keys) const {
    const int64_t v = integer(keys);
    if (v <= 0) throw fail(pick(keys), "must be positive, found " + std::to_string(v));
    return v;
  }
  double number(const char* key) const {
    if (!has(key)) throw fail(key, "missing");
    return as_number(at(key), key);
  }
  double number_or(const char* key, double fallback) const { return has(key) ? as_number(at(key), key) : fallback; }
  std::string string(const char* key) const {
    if (!has(key)) throw fail(key, "missing");
    if (!at(key).is_string()) throw fail(key, "must be a string, found " + at(key).dump());
    return at(key).get<std::string>();
  }

  int64_t as_integer(const json& v, const std::string& field) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    // 4.0 is accepted as 4: some writers emit integral floats.
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::fabs(v.get<double>()) < 9e15)
      return int64_t(v.get<double>());
    throw fail(field, "must be an integer, found " + v.dump());
  }
  double as_number(const json& v, const std::string& field) const {
    if (!v.is_number()) throw fail(field, "must be a number, found " + v.dump());
    return v.get<double>();
  }

  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

AttentionKind attention_from_ratio(int64_t ratio, int64_t csa_rate, const Fields& f, size_t layer) {
  if (ratio == 0) return AttentionKind::Sliding;
  if (ratio == csa_rate) return AttentionKind::CSA;
  if (ratio > 0) return AttentionKind::HCA;
  throw f.fail("compress_ratios[" + std::to_string(layer) + "]", "must be 0 or a positive rate, found " +
                                                                    std::to_string(ratio));
}

// A transformers rope_parameters entry ({rope_type, rope_theta, factor, ...}) or the release's
// rope_scaling ({type, factor, ...}) merged with a theta.
RopeParams parse_rope(const json& r, double theta, const Fields& f, const std::string& field) {
  if (!r.is_object()) throw f.fail(field, "must be an object, found " + r.dump());
  RopeParams p;
  p.theta = theta;
  const char* type_key = r.contains("rope_type") ? "rope_type" : "type";
  if (r.contains(type_key)) {
    if (!r[type_key].is_string()) throw f.fail(field + "." + type_key, "must be a string");
    p.type = r[type_key].get<std::string>();
  }
  if (p.type != "default" && p.type != "yarn")
    throw f.fail(field + "." + type_key, "unsupported rope type \"" + p.type + "\" (dsq knows default and yarn)");
  if (p.type == "yarn") {
    for (const char* k : {"factor", "original_max_position_embeddings"}) {
      if (!r.contains(k)) throw f.fail(field + "." + k, "missing (needed for yarn)");
    }
    p.factor = f.as_number(r["factor"], field + ".factor");
    p.original_max_positions = f.as_integer(r["original_max_position_embeddings"], field + ".original_max_position_embeddings");
    if (r.contains("beta_fast")) p.beta_fast = f.as_number(r["beta_fast"], field + ".beta_fast");
    if (r.contains("beta_slow")) p.beta_slow = f.as_number(r["beta_slow"], field + ".beta_slow");
    if (!(p.factor >= 1.0)) throw f.fail(field + ".factor", "must be >= 1");
    if (p.original_max_positions <= 0) throw f.fail(field + ".original_max_position_embeddings", "must be positive");
    // DeepSeek-V4 uses no YaRN magnitude scaling (§1.4); a config asking for one is not V4.
    if (r.contains("attention_factor") && !r["attention_factor"].is_null() &&
        f.as_number(r["attention_factor"], field + ".attention_factor") != 1.0)
      throw f.fail(field + ".attention_factor", "must be 1.0 (DeepSeek-V4 applies no YaRN mscale)");
  }
  if (!(p.theta > 0)) throw f.fail(field + ".rope_theta", "must be positive");
  return p;
}

std::vector<std::string> string_list(const Fields& f, const char* key) {
  const json& v = f.at(key);
  if (!v.is_array()) throw f.fail(key, "must be a list of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) throw f.fail(std::string(key) + "[" + std::to_string(i) + "]", "must be a string");
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

void parse_attention_schedule(const Fields& f, ModelConfig& c) {
  // Compression rates: transformers' compress_rates dict, its legacy scalars, or (release)
  // the values inside compress_ratios. With none of them the ModelConfig defaults (4, 128)
  // stand, as they do in transformers' DeepseekV4Config.
  bool have_rates = false;
  if (f.has("compress_rates")) {
    const json& r = f.at("compress_rates");
    if (!r.is_object()) throw f.fail("compress_rates", "must be an object");
    for (const auto& [key, value] : r.items()) {
      if (key == kCsa) c.csa_rate = f.as_integer(value, "compress_rates." + key);
      else if (key == kHca) c.hca_rate = f.as_integer(value, "compress_rates." + key);
      else throw f.fail("compress_rates." + key, "unknown layer type");
    }
    have_rates = true;
  }
  if (f.has("compress_rate_csa")) c.csa_rate = f.integer({"compress_rate_csa"}), have_rates = true;
  if (f.has("compress_rate_hca")) c.hca_rate = f.integer({"compress_rate_hca"}), have_rates = true;

  std::vector<AttentionKind> from_ratios;
  if (f.has("compress_ratios")) {
    const json& r = f.at("compress_ratios");
    if (!r.is_array()) throw f.fail("compress_ratios", "must be a list of integers");
    if (int64_t(r.size()) != c.num_layers + c.num_mtp_layers)
      throw f.fail("compress_ratios", "has " + std::to_string(r.size()) + " entries, expected num_hidden_layers + "
                                      "num_nextn_predict_layers = " + std::to_string(c.num_layers + c.num_mtp_layers));
    std::vector<int64_t> ratios;
    for (size_t i = 0; i < r.size(); ++i) ratios.push_back(f.as_integer(r[i], "compress_ratios[" + std::to_string(i) + "]"));
    if (!have_rates) {
      // The release identifies CSA by the rate 4 (it switches on overlap and the indexer);
      // every other non-zero rate is HCA and must be the same.
      bool hca_seen = false;
      for (size_t i = 0; i < ratios.size(); ++i) {
        if (ratios[i] == 0 || ratios[i] == c.csa_rate) continue;
        if (hca_seen && ratios[i] != c.hca_rate)
          throw f.fail("compress_ratios[" + std::to_string(i) + "]",
                       "HCA rate " + std::to_string(ratios[i]) + " differs from " + std::to_string(c.hca_rate) +
                           " used earlier");
        c.hca_rate = ratios[i];
        hca_seen = true;
      }
    }
    for (int64_t i = 0; i < c.num_layers + c.num_mtp_layers; ++i) {
      const int64_t ratio = ratios[size_t(i)];
      if (ratio != 0 && ratio != c.csa_rate && ratio != c.hca_rate)
        throw f.fail("compress_ratios[" + std::to_string(i) + "]",
                     std::to_string(ratio) + " is neither 0, the CSA rate nor the HCA rate");
      const AttentionKind kind = attention_from_ratio(ratio, c.csa_rate, f, size_t(i));
      if (i < c.num_layers) from_ratios.push_back(kind);
    }
  }

  if (f.has("layer_types")) {
    const std::vector<std::string> types = string_list(f, "layer_types");
    if (int64_t(types.size()) != c.num_layers)
      throw f.fail("layer_types", "has " + std::to_string(types.size()) + " entries, num_hidden_layers is " +
                                  std::to_string(c.num_layers));
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] == kSliding) c.attention.push_back(AttentionKind::Sliding);
      else if (types[i] == kCsa) c.attention.push_back(AttentionKind::CSA);
      else if (types[i] == kHca) c.attention.push_back(AttentionKind::HCA);
      else throw f.fail("layer_types[" + std::to_string(i) + "]", "unknown layer type \"" + types[i] + "\"");
    }
    if (f.has("compress_ratios") && from_ratios != c.attention)
      throw f.fail("compress_ratios", "disagrees with layer_types");
  } else if (f.has("compress_ratios")) {
    c.attention = from_ratios;
  } else {
    throw f.fail("layer_types", "missing (and no compress_ratios): dsq does not assume a default layer schedule");
  }
  if (c.csa_rate <= 0 || c.hca_rate <= 0 || c.csa_rate == c.hca_rate)
    throw f.fail("compress_rates", "CSA and HCA rates must be positive and different, found " +
                                       std::to_string(c.csa_rate) + " and " + std::to_string(c.hca_rate));
}

void parse_moe_schedule(const Fields& f, ModelConfig& c) {
  std::vector<MoeKind> from_count;
  if (f.has("num_hash_layers")) {
    const int64_t n = f.integer({"num_hash_layers"});
    if (n < 0 || n > c.num_layers)
      throw f.fail("num_hash_layers", std::to_string(n) + " is outside [0, num_hidden_layers]");
    from_count.assign(size_t(c.num_layers), MoeKind::TopK);
    for (int64_t i = 0; i < n; ++i) from_count[size_t(i)] = MoeKind::Hash;
  }
  if (f.has("mlp_layer_types")) {
    const std::vector<std::string> types = string_list(f, "mlp_layer_types");
    if (int64_t(types.size()) != c.num_layers)
      throw f.fail("mlp_layer_types", "has " + std::to_string(types.size()) + " entries, num_hidden_layers is " +
                                      std::to_string(c.num_layers));
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] == kHashMoe) c.moe.push_back(MoeKind::Hash);
      else if (types[i] == kTopKMoe) c.moe.push_back(MoeKind::TopK);
      else throw f.fail("mlp_layer_types[" + std::to_string(i) + "]", "unknown MoE layer type \"" + types[i] + "\"");
      // The release spelling (num_hash_layers) can only say "the first n layers".
      if (i > 0 && c.moe[i] == MoeKind::Hash && c.moe[i - 1] == MoeKind::TopK)
        throw f.fail("mlp_layer_types[" + std::to_string(i) + "]", "hash_moe after a moe layer (hash layers must come first)");
    }
    if (f.has("num_hash_layers") && from_count != c.moe) throw f.fail("num_hash_layers", "disagrees with mlp_layer_types");
  } else if (f.has("num_hash_layers")) {
    c.moe = from_count;
  } else {
    throw f.fail("mlp_layer_types", "missing (and no num_hash_layers): dsq does not assume a default MoE schedule");
  }
}

void parse_rope_dims(const Fields& f, ModelConfig& c) {
  // partial_rotary_factor wins over qk_rope_head_dim when both are present (§1.3).
  double factor = 0;
  const char* field = nullptr;
  if (f.has("partial_rotary_factor")) {
    factor = f.number("partial_rotary_factor"), field = "partial_rotary_factor";
  } else if (f.has("rope_parameters") && f.at("rope_parameters").is_object() &&
             f.at("rope_parameters").contains("main") && f.at("rope_parameters")["main"].is_object() &&
             f.at("rope_parameters")["main"].contains("partial_rotary_factor")) {
    factor = f.as_number(f.at("rope_parameters")["main"]["partial_rotary_factor"],
                         "rope_parameters.main.partial_rotary_factor");
    field = "rope_parameters.main.partial_rotary_factor";
  }
  if (field) {
    const double r = factor * double(c.head_dim);
    if (!(r > 0) || std::fabs(r - std::round(r)) > 1e-9)
      throw f.fail(field, "times head_dim " + std::to_string(c.head_dim) + " is not a positive whole number of dims");
    c.rope_dim = int64_t(std::round(r));
  } else {
    c.rope_dim = f.positive({"qk_rope_head_dim"});
    field = "qk_rope_head_dim";
  }
  if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0)
    throw f.fail(field, "rotary dims " + std::to_string(c.rope_dim) + " must be even and at most head_dim " +
                            std::to_string(c.head_dim));
}

void parse_rope(const Fields& f, ModelConfig& c) {
  if (f.has("rope_parameters")) {
    const json& rp = f.at("rope_parameters");
    if (!rp.is_object() || !rp.contains("main") || !rp.contains("compress"))
      throw f.fail("rope_parameters", "must hold \"main\" and \"compress\" entries");
    for (const char* which : {"main", "compress"}) {
      const json& r = rp[which];
      const std::string field = std::string("rope_parameters.") + which;
      if (!r.is_object() || !r.contains("rope_theta")) throw f.fail(field + ".rope_theta", "missing");
      const double theta = f.as_number(r["rope_theta"], field + ".rope_theta");
      (std::string(which) == "main" ? c.rope_main : c.rope_compress) = parse_rope(r, theta, f, field);
    }
    return;
  }
  c.rope_main = parse_rope(json::object(), f.number("rope_theta"), f, "rope_theta");
  const double compress_theta = f.number("compress_rope_theta");
  c.rope_compress = f.has("rope_scaling") ? parse_rope(f.at("rope_scaling"), compress_theta, f, "rope_scaling")
                                          : parse_rope(json::object(), compress_theta, f, "compress_rope_theta");
}

void validate(const Fields& f, const ModelConfig& c) {
  auto need = [&](bool ok, const char* field, const std::string& problem) {
    if (!ok) throw f.fail(field, problem);
  };
  need(c.num_heads % c.o_groups == 0, "o_groups",
       "num_attention_heads " + std::to_string(c.num_heads) + " is not divisible by o_groups " + std::to_string(c.o_groups));
  need(c.num_experts_per_tok <= c.n_routed_experts, "num_experts_per_tok",
       std::to_string(c.num_experts_per_tok) + " exceeds n_routed_experts " + std::to_string(c.n_routed_experts));
  need(c.n_shared_experts >= 0, "n_shared_experts", "must not be negative");
  need(c.hc_sinkhorn_iters >= 1, "hc_sinkhorn_iters", "must be positive");
  need(c.rms_norm_eps > 0, "rms_norm_eps", "must be positive");
  need(c.hc_eps >= 0, "hc_eps", "must not be negative");
  need(c.swiglu_limit >= 0, "swiglu_limit", "must not be negative");
  need(c.num_mtp_layers >= 0, "num_nextn_predict_layers", "must not be negative");
  need(c.scoring_func == "sqrtsoftplus", "scoring_func",
       "unsupported \"" + c.scoring_func + "\" (DeepSeek-V4 routes with sqrtsoftplus)");
  if (f.has("num_key_value_heads"))
    need(f.integer({"num_key_value_heads"}) == 1, "num_key_value_heads", "must be 1 (DeepSeek-V4 shares one KV head)");
  if (f.has("hidden_act")) need(f.string("hidden_act") == "silu", "hidden_act", "must be silu");
}

}  // namespace

std::string_view attention_kind_name(AttentionKind k) {
  switch (k) {
    case AttentionKind::Sliding: return "sliding";
    case AttentionKind::CSA: return "csa";
    case AttentionKind::HCA: return "hca";
  }
  return "?";
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw error(source, ": config is not a JSON object");
  const Fields f(j, source);
  ModelConfig c;
  c.raw = j;
  c.vocab_size = f.positive({"vocab_size"});
  c.hidden_size = f.positive({"hidden_size"});
  c.num_layers = f.positive({"num_hidden_layers"});
  c.num_heads = f.positive({"num_attention_heads"});
  c.head_dim = f.positive({"head_dim"});
  c.q_lora_rank = f.positive({"q_lora_rank"});
  c.o_groups = f.positive({"o_groups"});
  c.o_lora_rank = f.positive({"o_lora_rank"});
  c.sliding_window = f.positive({"sliding_window"});
  c.index_n_heads = f.positive({"index_n_heads"});
  c.index_head_dim = f.positive({"index_head_dim"});
  c.index_topk = f.positive({"index_topk"});
  c.n_routed_experts = f.positive({"n_routed_experts", "num_local_experts"});
  c.num_experts_per_tok = f.positive({"num_experts_per_tok"});
  c.n_shared_experts = f.integer({"n_shared_experts"});
  c.moe_intermediate_size = f.positive({"moe_intermediate_size", "intermediate_size"});
  c.scoring_func = f.string("scoring_func");
  c.routed_scaling_factor = f.number("routed_scaling_factor");
  c.swiglu_limit = f.number("swiglu_limit");
  c.hc_mult = f.positive({"hc_mult"});
  c.hc_sinkhorn_iters = f.integer({"hc_sinkhorn_iters"});
  c.hc_eps = f.number("hc_eps");
  c.rms_norm_eps = f.number("rms_norm_eps");
  c.num_mtp_layers = f.integer_or("num_nextn_predict_layers", 0);
  c.max_position_embeddings = f.integer_or("max_position_embeddings", 0);
  c.bos_token_id = f.integer_or("bos_token_id", 0);
  c.eos_token_id = f.integer_or("eos_token_id", 1);
  if (f.has("tie_word_embeddings")) {
    if (!f.at("tie_word_embeddings").is_boolean()) throw f.fail("tie_word_embeddings", "must be true or false");
    c.tie_word_embeddings = f.at("tie_word_embeddings").get<bool>();
  }
  parse_rope_dims(f, c);
  parse_attention_schedule(f, c);
  parse_moe_schedule(f, c);
  parse_rope(f, c);
  validate(f, c);
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  if (!std::filesystem::exists(path)) throw error(path, ": no such file or directory");
  const std::string file =
      std::filesystem::is_directory(path) ? (std::filesystem::path(path) / "config.json").string() : path;
  std::ifstream in(file, std::ios::binary);
  if (!in) throw error(file, ": cannot open");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    std::string what = e.what();
    const size_t bracket = what.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] "
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    throw error(file, ": malformed JSON: ", what);
  }
  return from_json(j, file);
}

int64_t ModelConfig::compress_rate(int layer) const {
  DSQ_CHECK(layer >= 0 && layer < int(attention.size()), "layer ", layer, " out of range");
  switch (attention[size_t(layer)]) {
    case AttentionKind::Sliding: return 0;
    case AttentionKind::CSA: return csa_rate;
    case AttentionKind::HCA: return hca_rate;
  }
  return 0;
}

const RopeParams& ModelConfig::rope_for(int layer) const {
  return compress_rate(layer) == 0 ? rope_main : rope_compress;
}

json ModelConfig::to_release_json() const {
  if (csa_rate != 4)
    throw error("config: the release spelling identifies CSA layers by compress ratio 4, this model's CSA rate is ",
                csa_rate);
  if (rope_main.type != "default")
    throw error("config: the release spelling has no YaRN for the main RoPE (rope type ", rope_main.type, ")");
  json j = raw;
  for (const char* k : {"layer_types", "mlp_layer_types", "compress_rates", "compress_rate_csa", "compress_rate_hca",
                        "rope_parameters", "partial_rotary_factor", "num_local_experts", "intermediate_size"})
    j.erase(k);
  json ratios = json::array();
  for (int i = 0; i < int(num_layers); ++i) ratios.push_back(compress_rate(i));
  for (int64_t i = 0; i < num_mtp_layers; ++i) ratios.push_back(0);  // the MTP block is sliding
  j["compress_ratios"] = ratios;
  int64_t hash_layers = 0;
  while (hash_layers < num_layers && moe[size_t(hash_layers)] == MoeKind::Hash) ++hash_layers;
  j["num_hash_layers"] = hash_layers;
  j["num_nextn_predict_layers"] = num_mtp_layers;
  j["n_routed_experts"] = n_routed_experts;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["qk_rope_head_dim"] = rope_dim;
  j["rope_theta"] = rope_main.theta;
  j["compress_rope_theta"] = rope_compress.theta;
  if (rope_compress.type == "yarn") {
    j["rope_scaling"] = {{"type", "yarn"},
                         {"factor", rope_compress.factor},
                         {"original_max_position_embeddings", rope_compress.original_max_positions},
                         {"beta_fast", rope_compress.beta_fast},
                         {"beta_slow", rope_compress.beta_slow}};
  } else {
    j.erase("rope_scaling");
  }
  return j;
}

}  // namespace dsq
