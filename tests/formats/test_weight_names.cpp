// The name table: every row of dsv4-architecture.md §5.1-§5.3, transcribed here independently
// (layer 3, expert 5), must map from each of its spellings to the release name; quantized
// siblings, fused experts, MTP names and unknown names.
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "formats/weight_names.h"

namespace dsq {
namespace {

struct Spellings {
  const char* release;
  const char* transformers;  // "" when transformers has none
  const char* fixture;
};

// §5.1 and §5.2 with i = 3, e = 5, and §5.3 with mtp.0.
const std::vector<Spellings> kExpected = {
    {"embed.weight", "model.embed_tokens.weight", "model.embed_tokens.weight"},
    {"head.weight", "lm_head.weight", "head.weight"},
    {"norm.weight", "model.norm.weight", "model.norm.weight"},
    {"hc_head_fn", "model.hc_head.hc_fn", "model.hc_head.hc_fn"},
    {"hc_head_base", "model.hc_head.hc_base", "model.hc_head.hc_base"},
    {"hc_head_scale", "model.hc_head.hc_scale", "model.hc_head.hc_scale"},
    {"layers.3.attn_norm.weight", "model.layers.3.input_layernorm.weight", "model.layers.3.attn_norm.weight"},
    {"layers.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight", "model.layers.3.ffn_norm.weight"},
    {"layers.3.hc_attn_fn", "model.layers.3.attn_hc.fn", "model.layers.3.hc_attn_fn"},
    {"layers.3.hc_attn_base", "model.layers.3.attn_hc.base", "model.layers.3.hc_attn_base"},
    {"layers.3.hc_attn_scale", "model.layers.3.attn_hc.scale", "model.layers.3.hc_attn_scale"},
    {"layers.3.hc_ffn_fn", "model.layers.3.ffn_hc.fn", "model.layers.3.hc_ffn_fn"},
    {"layers.3.hc_ffn_base", "model.layers.3.ffn_hc.base", "model.layers.3.hc_ffn_base"},
    {"layers.3.hc_ffn_scale", "model.layers.3.ffn_hc.scale", "model.layers.3.hc_ffn_scale"},
    {"layers.3.attn.wq_a.weight", "model.layers.3.self_attn.q_a_proj.weight", "model.layers.3.attn.wq_a.weight"},
    {"layers.3.attn.q_norm.weight", "model.layers.3.self_attn.q_a_norm.weight", "model.layers.3.attn.q_norm.weight"},
    {"layers.3.attn.wq_b.weight", "model.layers.3.self_attn.q_b_proj.weight", "model.layers.3.attn.wq_b.weight"},
    {"layers.3.attn.wkv.weight", "model.layers.3.self_attn.kv_proj.weight", "model.layers.3.attn.wkv.weight"},
    {"layers.3.attn.kv_norm.weight", "model.layers.3.self_attn.kv_norm.weight", "model.layers.3.attn.norm.weight"},
    {"layers.3.attn.wo_a.weight", "model.layers.3.self_attn.o_a_proj.weight", "model.layers.3.attn.wo_a.weight"},
    {"layers.3.attn.wo_b.weight", "model.layers.3.self_attn.o_b_proj.weight", "model.layers.3.attn.wo_b.weight"},
    {"layers.3.attn.attn_sink", "model.layers.3.self_attn.sinks", "model.layers.3.attn.attn_sink"},
    {"layers.3.attn.compressor.wkv.weight", "model.layers.3.self_attn.compressor.kv_proj.weight",
     "model.layers.3.attn.compressor.wkv.weight"},
    {"layers.3.attn.compressor.wgate.weight", "model.layers.3.self_attn.compressor.gate_proj.weight",
     "model.layers.3.attn.compressor.wgate.weight"},
    {"layers.3.attn.compressor.ape", "model.layers.3.self_attn.compressor.position_bias",
     "model.layers.3.attn.compressor.ape"},
    {"layers.3.attn.compressor.norm.weight", "model.layers.3.self_attn.compressor.kv_norm.weight",
     "model.layers.3.attn.compressor.norm.weight"},
    {"layers.3.attn.indexer.wq_b.weight", "model.layers.3.self_attn.compressor.indexer.q_b_proj.weight",
     "model.layers.3.attn.indexer.wq_b.weight"},
    {"layers.3.attn.indexer.weights_proj.weight",
     "model.layers.3.self_attn.compressor.indexer.scorer.weights_proj.weight",
     "model.layers.3.attn.indexer.weights_proj.weight"},
    {"layers.3.attn.indexer.compressor.wkv.weight", "model.layers.3.self_attn.compressor.indexer.kv_proj.weight",
     "model.layers.3.attn.indexer.compressor.wkv.weight"},
    {"layers.3.attn.indexer.compressor.wgate.weight", "model.layers.3.self_attn.compressor.indexer.gate_proj.weight",
     "model.layers.3.attn.indexer.compressor.wgate.weight"},
    {"layers.3.attn.indexer.compressor.ape", "model.layers.3.self_attn.compressor.indexer.position_bias",
     "model.layers.3.attn.indexer.compressor.ape"},
    {"layers.3.attn.indexer.compressor.norm.weight", "model.layers.3.self_attn.compressor.indexer.kv_norm.weight",
     "model.layers.3.attn.indexer.compressor.norm.weight"},
    {"layers.3.ffn.gate.weight", "model.layers.3.mlp.gate.weight", "model.layers.3.ffn.gate.weight"},
    {"layers.3.ffn.gate.bias", "model.layers.3.mlp.gate.e_score_correction_bias", "model.layers.3.ffn.gate.bias"},
    {"layers.3.ffn.gate.tid2eid", "model.layers.3.mlp.gate.tid2eid", "model.layers.3.ffn.gate.tid2eid"},
    {"layers.3.ffn.shared_experts.w1.weight", "model.layers.3.mlp.shared_experts.gate_proj.weight",
     "model.layers.3.ffn.shared_experts.w1.weight"},
    {"layers.3.ffn.shared_experts.w3.weight", "model.layers.3.mlp.shared_experts.up_proj.weight",
     "model.layers.3.ffn.shared_experts.w3.weight"},
    {"layers.3.ffn.shared_experts.w2.weight", "model.layers.3.mlp.shared_experts.down_proj.weight",
     "model.layers.3.ffn.shared_experts.w2.weight"},
    // Routed experts: the transformers spelling is fused (tested separately).
    {"layers.3.ffn.experts.5.w1.weight", "", "model.layers.3.ffn.experts.5.w1.weight"},
    {"layers.3.ffn.experts.5.w3.weight", "", "model.layers.3.ffn.experts.5.w3.weight"},
    {"layers.3.ffn.experts.5.w2.weight", "", "model.layers.3.ffn.experts.5.w2.weight"},
    {"mtp.0.e_proj.weight", "", "mtp.0.e_proj.weight"},
    {"mtp.0.h_proj.weight", "", "mtp.0.h_proj.weight"},
    {"mtp.0.enorm.weight", "", "mtp.0.enorm.weight"},
    {"mtp.0.hnorm.weight", "", "mtp.0.hnorm.weight"},
    {"mtp.0.norm.weight", "", "mtp.0.norm.weight"},
    {"mtp.0.hc_head_fn", "", "mtp.0.hc_head_fn"},
    {"mtp.0.hc_head_base", "", "mtp.0.hc_head_base"},
    {"mtp.0.hc_head_scale", "", "mtp.0.hc_head_scale"},
};

std::string native(const std::string& name) {
  const auto n = to_native_name(name);
  return n ? n->name : "<none>";
}

TEST(WeightNames, EverySpellingOfEveryRowMapsToTheReleaseName) {
  for (const Spellings& s : kExpected) {
    EXPECT_EQ(native(s.release), s.release);
    EXPECT_EQ(native(s.fixture), s.release) << s.fixture;
    if (*s.transformers) {
      EXPECT_EQ(native(s.transformers), s.release) << s.transformers;
    }
    EXPECT_EQ(to_native_names(s.release).size(), 1u) << s.release;
  }
}

TEST(WeightNames, TheTableHasExactlyTheRowsOfTheSpec) {
  // The transcription above has one entry per row; the three fused-expert rows count once each.
  EXPECT_EQ(weight_name_table().size(), kExpected.size());
  // Global names are whole names, the others relative to a layer or MTP block: a spelling
  // only has to be unique among names of the same kind ("norm.weight" is both).
  using Key = std::pair<bool, std::string_view>;
  std::set<Key> natives;
  for (const WeightNameRow& row : weight_name_table()) {
    const bool global = row.scope == WeightNameRow::Scope::Global;
    EXPECT_TRUE(natives.insert({global, row.release}).second) << row.release;
  }
  // No spelling may name two different tensors (the fused gate_up_proj is the one shared on purpose).
  std::map<Key, std::string_view> owner;
  for (const WeightNameRow& row : weight_name_table()) {
    const bool global = row.scope == WeightNameRow::Scope::Global;
    for (std::string_view s : {row.release, row.transformers, row.fixture}) {
      if (s.empty()) continue;
      const auto [it, fresh] = owner.emplace(Key{global, s}, row.release);
      if (!fresh && row.fused_part < 0) {
        EXPECT_EQ(it->second, row.release) << s;
      }
    }
  }
}

TEST(WeightNames, MtpBlocksUseLayerLeavesAndOwnTensors) {
  EXPECT_EQ(native("mtp.0.attn.wq_a.weight"), "mtp.0.attn.wq_a.weight");
  EXPECT_EQ(native("mtp.0.ffn.experts.255.w2.weight"), "mtp.0.ffn.experts.255.w2.weight");
  EXPECT_EQ(native("mtp.0.ffn.gate.bias"), "mtp.0.ffn.gate.bias");
  EXPECT_EQ(native("model.mtp.0.e_proj.weight"), "mtp.0.e_proj.weight");
  EXPECT_EQ(native("mtp.0.e_proj.scale"), "mtp.0.e_proj.scale");
  // MTP-only leaves are not decoder-layer tensors.
  EXPECT_FALSE(to_native_name("layers.3.e_proj.weight"));
  EXPECT_FALSE(to_native_name("layers.3.norm.weight"));
  EXPECT_FALSE(to_native_name("layers.3.hc_head_fn"));
}

TEST(WeightNames, QuantizedSiblingsKeepTheirSuffixOnTheNativeModule) {
  EXPECT_EQ(native("layers.3.attn.wq_a.scale"), "layers.3.attn.wq_a.scale");
  EXPECT_EQ(native("model.layers.3.self_attn.q_a_proj.weight_scale_inv"), "layers.3.attn.wq_a.weight_scale_inv");
  EXPECT_EQ(native("layers.1.ffn.experts.3.w1.weight_packed"), "layers.1.ffn.experts.3.w1.weight_packed");
  EXPECT_EQ(native("layers.1.ffn.experts.3.w2.weight_scale"), "layers.1.ffn.experts.3.w2.weight_scale");
  EXPECT_EQ(native("layers.1.ffn.experts.3.w3.weight_shape"), "layers.1.ffn.experts.3.w3.weight_shape");
  EXPECT_EQ(native("model.layers.2.mlp.shared_experts.down_proj.weight_scale_inv"),
            "layers.2.ffn.shared_experts.w2.weight_scale_inv");
  EXPECT_EQ(native("layers.2.attn.indexer.wq_b.weight_scale"), "layers.2.attn.indexer.wq_b.weight_scale");
  EXPECT_EQ(native("model.layers.2.self_attn.compressor.indexer.scorer.weights_proj.weight_packed"),
            "layers.2.attn.indexer.weights_proj.weight_packed");
  EXPECT_EQ(native("layers.2.attn.wo_b.weight_zero_point"), "layers.2.attn.wo_b.weight_zero_point");
  EXPECT_EQ(native("layers.2.attn.wo_b.weight_g_idx"), "layers.2.attn.wo_b.weight_g_idx");
  EXPECT_EQ(native("layers.2.attn.wo_b.input_scale"), "layers.2.attn.wo_b.input_scale");
  // Only linear layers have quantized siblings, and only with known suffixes.
  EXPECT_FALSE(to_native_name("layers.3.attn.q_norm.scale"));
  EXPECT_FALSE(to_native_name("layers.3.attn.wq_a.bias"));
  EXPECT_FALSE(to_native_name("layers.3.attn.wq_a.weight_foo"));
}

TEST(WeightNames, FusedTransformersExpertsMapToPerExpertPatterns) {
  const std::vector<NativeName> gate_up = to_native_names("model.layers.4.mlp.experts.gate_up_proj");
  ASSERT_EQ(gate_up.size(), 2u);
  EXPECT_EQ(gate_up[0].name, "layers.4.ffn.experts.{e}.w1.weight");
  EXPECT_TRUE(gate_up[0].fused_experts);
  EXPECT_EQ(gate_up[0].fused_part, 0);
  EXPECT_EQ(gate_up[1].name, "layers.4.ffn.experts.{e}.w3.weight");
  EXPECT_EQ(gate_up[1].fused_part, 1);
  const std::vector<NativeName> down = to_native_names("model.layers.4.mlp.experts.down_proj");
  ASSERT_EQ(down.size(), 1u);
  EXPECT_EQ(down[0].name, "layers.4.ffn.experts.{e}.w2.weight");
  EXPECT_TRUE(down[0].fused_experts);
  EXPECT_EQ(to_native_name("model.layers.4.mlp.experts.gate_up_proj")->name, "layers.4.ffn.experts.{e}.w1.weight");
  EXPECT_FALSE(to_native_names("layers.1.ffn.experts.3.w1.weight")[0].fused_experts);
}

TEST(WeightNames, NamesOutsideTheModelAreNotMapped) {
  for (const char* name : {"model.rotary_emb.inv_freq", "lm_head.bias", "layers.x.attn.wq_a.weight",
                           "layers.3", "layers.3.", "layers.3.attn.unknown.weight", "logits_full", "",
                           "model.layers.3.mlp.experts.5.gate_proj.weight", "layers.-1.attn.wq_a.weight"}) {
    EXPECT_TRUE(to_native_names(name).empty()) << name;
  }
}

}  // namespace
}  // namespace dsq
