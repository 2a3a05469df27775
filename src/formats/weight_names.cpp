// The DeepSeek-V4 name table and the normaliser that maps any spelling to native names.
#include "formats/weight_names.h"

#include <unordered_map>

namespace dsq {

namespace {

using Scope = WeightNameRow::Scope;

// Builds the lookup from every accepted spelling of a leaf to its row.
struct NameIndex {
  std::unordered_map<std::string, const WeightNameRow*> global;
  std::unordered_map<std::string, const WeightNameRow*> leaf;    // whole layer-relative leaves
  std::unordered_map<std::string, const WeightNameRow*> module;  // linear modules, without ".weight"
};

std::string_view strip_model_prefix(std::string_view s) {
  constexpr std::string_view kModel = "model.";
  return s.substr(0, kModel.size()) == kModel ? s.substr(kModel.size()) : s;
}

bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

const NameIndex& name_index() {
  static const NameIndex index = [] {
    NameIndex ix;
    for (const WeightNameRow& row : weight_name_table()) {
      for (std::string_view spelling : {row.release, row.transformers, row.fixture}) {
        if (spelling.empty()) continue;
        if (row.scope == Scope::Global) {
          ix.global[std::string(strip_model_prefix(spelling))] = &row;
          continue;
        }
        ix.leaf[std::string(spelling)] = &row;
        if (row.linear && ends_with(spelling, ".weight"))
          ix.module[std::string(spelling.substr(0, spelling.size() - 7))] = &row;
      }
    }
    return ix;
  }();
  return index;
}

// Reads "<word>.<digits>." at the start of `s`; on success sets `prefix` to that text.
bool take_indexed_prefix(std::string_view s, std::string_view word, std::string_view* prefix) {
  if (s.substr(0, word.size()) != word || s.size() <= word.size() + 1 || s[word.size()] != '.') return false;
  size_t i = word.size() + 1;
  const size_t digits_begin = i;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == digits_begin || i >= s.size() || s[i] != '.') return false;
  *prefix = s.substr(0, i + 1);
  return true;
}

// Replaces "experts.<n>." by "experts.{e}." (the table's spelling); `expert` gets "<n>".
std::string generalise_expert(std::string_view leaf, std::string* expert) {
  const std::string_view key = "experts.";
  const size_t at = leaf.find(key);
  if (at == std::string_view::npos) return std::string(leaf);
  size_t i = at + key.size();
  const size_t digits_begin = i;
  while (i < leaf.size() && leaf[i] >= '0' && leaf[i] <= '9') ++i;
  if (i == digits_begin || i >= leaf.size() || leaf[i] != '.') return std::string(leaf);
  *expert = std::string(leaf.substr(digits_begin, i - digits_begin));
  return std::string(leaf.substr(0, digits_begin)) + "{e}" + std::string(leaf.substr(i));
}

std::string specialise_expert(std::string_view pattern, const std::string& expert) {
  std::string s(pattern);
  const size_t at = s.find("{e}");
  if (at != std::string::npos && !expert.empty()) s.replace(at, 3, expert);
  return s;
}

}  // namespace

const std::vector<WeightNameRow>& weight_name_table() {
  // clang-format off
  static const std::vector<WeightNameRow> table = {
    // §5.1 global tensors: release | transformers module | fixture file
    {Scope::Global, "embed.weight",  "model.embed_tokens.weight", "model.embed_tokens.weight"},
    {Scope::Global, "head.weight",   "lm_head.weight",            "head.weight"},
    {Scope::Global, "norm.weight",   "model.norm.weight",         "model.norm.weight"},
    {Scope::Global, "hc_head_fn",    "model.hc_head.hc_fn",       "model.hc_head.hc_fn"},
    {Scope::Global, "hc_head_base",  "model.hc_head.hc_base",     "model.hc_head.hc_base"},
    {Scope::Global, "hc_head_scale", "model.hc_head.hc_scale",    "model.hc_head.hc_scale"},

    // §5.2 per layer, relative to layers.{i}. / model.layers.{i}.
    {Scope::Layer, "attn_norm.weight", "input_layernorm.weight",          "attn_norm.weight"},
    {Scope::Layer, "ffn_norm.weight",  "post_attention_layernorm.weight", "ffn_norm.weight"},
    {Scope::Layer, "hc_attn_fn",    "attn_hc.fn",    "hc_attn_fn"},
    {Scope::Layer, "hc_attn_base",  "attn_hc.base",  "hc_attn_base"},
    {Scope::Layer, "hc_attn_scale", "attn_hc.scale", "hc_attn_scale"},
    {Scope::Layer, "hc_ffn_fn",     "ffn_hc.fn",     "hc_ffn_fn"},
    {Scope::Layer, "hc_ffn_base",   "ffn_hc.base",   "hc_ffn_base"},
    {Scope::Layer, "hc_ffn_scale",  "ffn_hc.scale",  "hc_ffn_scale"},
    {Scope::Layer, "attn.wq_a.weight",   "self_attn.q_a_proj.weight", "attn.wq_a.weight", true},
    {Scope::Layer, "attn.q_norm.weight", "self_attn.q_a_norm.weight", "attn.q_norm.weight"},
    {Scope::Layer, "attn.wq_b.weight",   "self_attn.q_b_proj.weight", "attn.wq_b.weight", true},
    {Scope::Layer, "attn.wkv.weight",    "self_attn.kv_proj.weight",  "attn.wkv.weight", true},
    {Scope::Layer, "attn.kv_norm.weight", "self_attn.kv_norm.weight", "attn.norm.weight"},
    {Scope::Layer, "attn.wo_a.weight",   "self_attn.o_a_proj.weight", "attn.wo_a.weight", true},
    {Scope::Layer, "attn.wo_b.weight",   "self_attn.o_b_proj.weight", "attn.wo_b.weight", true},
    {Scope::Layer, "attn.attn_sink",     "self_attn.sinks",           "attn.attn_sink"},
    {Scope::Layer, "attn.compressor.wkv.weight",   "self_attn.compressor.kv_proj.weight",   "attn.compressor.wkv.weight", true},
    {Scope::Layer, "attn.compressor.wgate.weight", "self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight", true},
    {Scope::Layer, "attn.compressor.ape",          "self_attn.compressor.position_bias",    "attn.compressor.ape"},
    {Scope::Layer, "attn.compressor.norm.weight",  "self_attn.compressor.kv_norm.weight",   "attn.compressor.norm.weight"},
    {Scope::Layer, "attn.indexer.wq_b.weight", "self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight", true},
    {Scope::Layer, "attn.indexer.weights_proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight",
                   "attn.indexer.weights_proj.weight", true},
    {Scope::Layer, "attn.indexer.compressor.wkv.weight",   "self_attn.compressor.indexer.kv_proj.weight",
                   "attn.indexer.compressor.wkv.weight", true},
    {Scope::Layer, "attn.indexer.compressor.wgate.weight", "self_attn.compressor.indexer.gate_proj.weight",
                   "attn.indexer.compressor.wgate.weight", true},
    {Scope::Layer, "attn.indexer.compressor.ape",         "self_attn.compressor.indexer.position_bias",
                   "attn.indexer.compressor.ape"},
    {Scope::Layer, "attn.indexer.compressor.norm.weight", "self_attn.compressor.indexer.kv_norm.weight",
                   "attn.indexer.compressor.norm.weight"},
    {Scope::Layer, "ffn.gate.weight",  "mlp.gate.weight",                 "ffn.gate.weight", true},
    {Scope::Layer, "ffn.gate.bias",    "mlp.gate.e_score_correction_bias", "ffn.gate.bias"},
    {Scope::Layer, "ffn.gate.tid2eid", "mlp.gate.tid2eid",                "ffn.gate.tid2eid"},
    {Scope::Layer, "ffn.shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight", true},
    {Scope::Layer, "ffn.shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight",   "ffn.shared_experts.w3.weight", true},
    {Scope::Layer, "ffn.shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight", true},
    {Scope::Layer, "ffn.experts.{e}.w1.weight", "mlp.experts.gate_up_proj", "ffn.experts.{e}.w1.weight", true, 0},
    {Scope::Layer, "ffn.experts.{e}.w3.weight", "mlp.experts.gate_up_proj", "ffn.experts.{e}.w3.weight", true, 1},
    {Scope::Layer, "ffn.experts.{e}.w2.weight", "mlp.experts.down_proj",    "ffn.experts.{e}.w2.weight", true, 0},

    // §5.3 MTP-only tensors, relative to mtp.{i}. (transformers does not build the MTP)
    {Scope::MtpOnly, "e_proj.weight", "", "e_proj.weight", true},
    {Scope::MtpOnly, "h_proj.weight", "", "h_proj.weight", true},
    {Scope::MtpOnly, "enorm.weight",  "", "enorm.weight"},
    {Scope::MtpOnly, "hnorm.weight",  "", "hnorm.weight"},
    {Scope::MtpOnly, "norm.weight",   "", "norm.weight"},
    {Scope::MtpOnly, "hc_head_fn",    "", "hc_head_fn"},
    {Scope::MtpOnly, "hc_head_base",  "", "hc_head_base"},
    {Scope::MtpOnly, "hc_head_scale", "", "hc_head_scale"},
  };
  // clang-format on
  return table;
}

const std::vector<std::string_view>& quantized_suffixes() {
  static const std::vector<std::string_view> suffixes = {
      "scale",        "weight_scale_inv",  "weight_packed", "weight_scale",
      "weight_shape", "weight_zero_point", "weight_g_idx",  "input_scale",
  };
  return suffixes;
}

std::vector<NativeName> to_native_names(std::string_view checkpoint_name) {
  const NameIndex& ix = name_index();
  const std::string_view name = strip_model_prefix(checkpoint_name);
  if (const auto it = ix.global.find(std::string(name)); it != ix.global.end())
    return {NativeName{std::string(it->second->release)}};

  std::string_view prefix;
  const bool mtp = take_indexed_prefix(name, "mtp", &prefix);
  if (!mtp && !take_indexed_prefix(name, "layers", &prefix)) return {};
  std::string expert;
  const std::string leaf = generalise_expert(name.substr(prefix.size()), &expert);

  // Whole leaves: plain tensors, `.weight` of linear layers, and the fused expert tensors.
  if (const auto it = ix.leaf.find(leaf); it != ix.leaf.end()) {
    const WeightNameRow& row = *it->second;
    if (row.scope == Scope::MtpOnly && !mtp) return {};
    const bool fused = row.fused_part >= 0 && leaf == row.transformers;
    if (!fused) return {NativeName{std::string(prefix) + specialise_expert(row.release, expert)}};
    std::vector<NativeName> out;
    for (const WeightNameRow& r : weight_name_table()) {
      if (r.transformers == row.transformers)
        out.push_back(NativeName{std::string(prefix) + std::string(r.release), true, r.fused_part});
    }
    return out;
  }
  // Quantized siblings of a linear layer: "<module>.<suffix>" -> "<native module>.<suffix>".
  const size_t dot = leaf.rfind('.');
  if (dot == std::string::npos) return {};
  const std::string_view suffix = std::string_view(leaf).substr(dot + 1);
  bool known_suffix = false;
  for (std::string_view s : quantized_suffixes()) known_suffix = known_suffix || s == suffix;
  if (!known_suffix) return {};
  const auto it = ix.module.find(leaf.substr(0, dot));
  if (it == ix.module.end()) return {};
  const WeightNameRow& row = *it->second;
  if (row.scope == Scope::MtpOnly && !mtp) return {};
  const std::string_view native_module = row.release.substr(0, row.release.size() - 7);  // drop ".weight"
  return {NativeName{std::string(prefix) + specialise_expert(native_module, expert) + "." + std::string(suffix)}};
}

std::optional<NativeName> to_native_name(std::string_view checkpoint_name) {
  std::vector<NativeName> names = to_native_names(checkpoint_name);
  if (names.empty()) return std::nullopt;
  return names.front();
}

}  // namespace dsq
