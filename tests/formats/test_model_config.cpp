// ModelConfig: the three fixture configs (transformers spelling), a V4-Flash release config
// (values from checkpoint-formats.md §1.2), conversion between the spellings, and broken
// configs that must name the file and the field.
#include <fstream>

#include <gtest/gtest.h>

#include "core/error.h"
#include "formats/model_config.h"
#include "support/paths.h"

namespace dsq {
namespace {

using nlohmann::json;
using A = AttentionKind;
using M = MoeKind;

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// The release config.json of DeepSeek-V4-Flash (checkpoint-formats.md §1.2), dsq-relevant keys.
json v4_flash_release() {
  json ratios = {0, 0};
  for (int i = 0; i < 20; ++i) ratios.push_back(4), ratios.push_back(128);
  ratios.push_back(4);
  ratios.push_back(0);  // entry 43: the MTP layer
  return {{"architectures", {"DeepseekV4ForCausalLM"}}, {"model_type", "deepseek_v4"},
          {"vocab_size", 129280}, {"hidden_size", 4096}, {"num_hidden_layers", 43},
          {"num_attention_heads", 64}, {"num_key_value_heads", 1}, {"head_dim", 512},
          {"qk_rope_head_dim", 64}, {"q_lora_rank", 1024}, {"o_groups", 8}, {"o_lora_rank", 1024},
          {"sliding_window", 128}, {"compress_ratios", ratios}, {"compress_rope_theta", 160000},
          {"rope_theta", 10000},
          {"rope_scaling", {{"type", "yarn"}, {"factor", 16}, {"original_max_position_embeddings", 65536},
                            {"beta_fast", 32}, {"beta_slow", 1}}},
          {"max_position_embeddings", 1048576}, {"index_n_heads", 64}, {"index_head_dim", 128},
          {"index_topk", 512}, {"n_routed_experts", 256}, {"num_experts_per_tok", 6},
          {"n_shared_experts", 1}, {"moe_intermediate_size", 2048}, {"num_hash_layers", 3},
          {"scoring_func", "sqrtsoftplus"}, {"topk_method", "noaux_tc"}, {"norm_topk_prob", true},
          {"routed_scaling_factor", 1.5}, {"swiglu_limit", 10.0}, {"hc_mult", 4},
          {"hc_sinkhorn_iters", 20}, {"hc_eps", 1e-6}, {"rms_norm_eps", 1e-6},
          {"num_nextn_predict_layers", 1}, {"hidden_act", "silu"}, {"bos_token_id", 0},
          {"eos_token_id", 1}, {"tie_word_embeddings", false}, {"expert_dtype", "fp4"},
          {"quantization_config", {{"quant_method", "fp8"}, {"scale_fmt", "ue8m0"}}}};
}

void expect_same_model(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rope_dim, b.rope_dim);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.o_groups, b.o_groups);
  EXPECT_EQ(a.o_lora_rank, b.o_lora_rank);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.attention, b.attention);
  EXPECT_EQ(a.moe, b.moe);
  EXPECT_EQ(a.csa_rate, b.csa_rate);
  EXPECT_EQ(a.hca_rate, b.hca_rate);
  EXPECT_EQ(a.rope_main, b.rope_main);
  EXPECT_EQ(a.rope_compress, b.rope_compress);
  EXPECT_EQ(a.index_n_heads, b.index_n_heads);
  EXPECT_EQ(a.index_head_dim, b.index_head_dim);
  EXPECT_EQ(a.index_topk, b.index_topk);
  EXPECT_EQ(a.n_routed_experts, b.n_routed_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.n_shared_experts, b.n_shared_experts);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.scoring_func, b.scoring_func);
  EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_EQ(a.swiglu_limit, b.swiglu_limit);
  EXPECT_EQ(a.hc_mult, b.hc_mult);
  EXPECT_EQ(a.hc_sinkhorn_iters, b.hc_sinkhorn_iters);
  EXPECT_EQ(a.hc_eps, b.hc_eps);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.num_mtp_layers, b.num_mtp_layers);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
}

// The message from_json throws for `j`, or "" when it accepts it.
std::string config_error(const json& j) {
  try {
    ModelConfig::from_json(j, "dir/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, TinyAFixture) {
  const ModelConfig c = ModelConfig::load(test::shared_path("models/tiny-a"));
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope_dim, 8);
  EXPECT_EQ(c.sliding_window, 8);
  EXPECT_EQ(c.csa_rate, 4);
  EXPECT_EQ(c.hca_rate, 16);
  EXPECT_EQ(c.index_topk, 4);
  EXPECT_EQ(c.index_n_heads, 16);
  EXPECT_EQ(c.index_head_dim, 16);
  EXPECT_EQ(c.n_routed_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.o_groups, 2);
  EXPECT_EQ(c.hc_mult, 4);
  EXPECT_EQ(c.num_mtp_layers, 0);
  EXPECT_EQ(c.routed_scaling_factor, 1.5);
  EXPECT_EQ(c.swiglu_limit, 10.0);
  EXPECT_EQ(c.attention, (std::vector<A>{A::Sliding, A::CSA, A::HCA, A::CSA}));
  EXPECT_EQ(c.moe, (std::vector<M>{M::Hash, M::TopK, M::TopK, M::TopK}));
  EXPECT_EQ(c.rope_main.theta, 10000.0);
  EXPECT_EQ(c.rope_compress.theta, 160000.0);
  EXPECT_EQ(c.rope_compress.type, "default");
  EXPECT_EQ(c.compress_rate(0), 0);
  EXPECT_EQ(c.compress_rate(2), 16);
  EXPECT_EQ(&c.rope_for(0), &c.rope_main);
  EXPECT_EQ(&c.rope_for(1), &c.rope_compress);
}

TEST(ModelConfig, TinyBAndTinyBrownFixtures) {
  const ModelConfig b = ModelConfig::load(test::shared_path("models/tiny-b/config.json"));
  EXPECT_EQ(b.attention, (std::vector<A>{A::Sliding, A::CSA, A::HCA, A::CSA, A::HCA}));
  EXPECT_EQ(b.moe, (std::vector<M>{M::Hash, M::Hash, M::TopK, M::TopK, M::TopK}));
  EXPECT_EQ(b.hidden_size, 128);
  EXPECT_EQ(b.head_dim, 64);
  EXPECT_EQ(b.rope_dim, 16);
  EXPECT_EQ(b.index_topk, 8);
  EXPECT_EQ(b.index_head_dim, 32);
  EXPECT_EQ(b.moe_intermediate_size, 128);
  EXPECT_EQ(b.vocab_size, 1024);

  const ModelConfig brown = ModelConfig::load(test::shared_path("models/tiny-brown"));
  EXPECT_EQ(brown.attention, (std::vector<A>{A::Sliding, A::CSA, A::HCA, A::CSA, A::HCA}));
  EXPECT_EQ(brown.moe, (std::vector<M>{M::Hash, M::TopK, M::TopK, M::TopK, M::TopK}));
  EXPECT_EQ(brown.hidden_size, 256);
  EXPECT_EQ(brown.head_dim, 128);
  EXPECT_EQ(brown.rope_dim, 32);
  EXPECT_EQ(brown.sliding_window, 32);
  EXPECT_EQ(brown.hca_rate, 32);
  EXPECT_EQ(brown.index_topk, 16);
  EXPECT_EQ(brown.n_routed_experts, 16);
  EXPECT_EQ(brown.num_experts_per_tok, 4);
  EXPECT_EQ(brown.vocab_size, 4096);
}

TEST(ModelConfig, V4FlashReleaseConfigGivesThePerLayerSchedule) {
  const ModelConfig c = ModelConfig::from_json(v4_flash_release(), "config.json");
  ASSERT_EQ(c.attention.size(), 43u);
  ASSERT_EQ(c.moe.size(), 43u);
  EXPECT_EQ(c.attention[0], A::Sliding);
  EXPECT_EQ(c.attention[1], A::Sliding);
  EXPECT_EQ(c.attention[2], A::CSA);
  int csa = 0, hca = 0;
  for (int i = 3; i < 43; ++i) {
    EXPECT_EQ(c.attention[size_t(i)], i % 2 ? A::HCA : A::CSA) << "layer " << i;
    csa += c.attention[size_t(i)] == A::CSA;
    hca += c.attention[size_t(i)] == A::HCA;
  }
  EXPECT_EQ(csa + 1, 21);  // with layer 2
  EXPECT_EQ(hca, 20);
  for (int i = 0; i < 43; ++i) EXPECT_EQ(c.moe[size_t(i)], i < 3 ? M::Hash : M::TopK) << "layer " << i;
  EXPECT_EQ(c.csa_rate, 4);
  EXPECT_EQ(c.hca_rate, 128);
  EXPECT_EQ(c.rope_dim, 64);
  EXPECT_EQ(c.num_mtp_layers, 1);
  EXPECT_EQ(c.rope_main, (RopeParams{"default", 10000.0}));
  EXPECT_EQ(c.rope_compress.type, "yarn");
  EXPECT_EQ(c.rope_compress.theta, 160000.0);
  EXPECT_EQ(c.rope_compress.factor, 16.0);
  EXPECT_EQ(c.rope_compress.original_max_positions, 65536);
  EXPECT_EQ(c.rope_compress.beta_fast, 32.0);
  EXPECT_EQ(c.rope_compress.beta_slow, 1.0);
  EXPECT_EQ(&c.rope_for(0), &c.rope_main);
  EXPECT_EQ(&c.rope_for(3), &c.rope_compress);
}

TEST(ModelConfig, ReleaseSpellingSurvivesItsOwnRoundTrip) {
  const json original = v4_flash_release();
  const json again = ModelConfig::from_json(original, "config.json").to_release_json();
  EXPECT_EQ(again["compress_ratios"], original["compress_ratios"]);
  EXPECT_EQ(again["num_hash_layers"], 3);
  EXPECT_EQ(again["rope_scaling"]["type"], "yarn");
  EXPECT_EQ(again["rope_scaling"]["factor"], 16.0);
  EXPECT_EQ(again["quantization_config"], original["quantization_config"]);  // unrelated keys kept
  EXPECT_EQ(again["expert_dtype"], "fp4");
}

TEST(ModelConfig, TransformersToReleaseAndBackGivesTheSameModel) {
  for (const char* model : {"models/tiny-a", "models/tiny-b", "models/tiny-brown"}) {
    SCOPED_TRACE(model);
    const ModelConfig hf = ModelConfig::load(test::shared_path(model));
    const json release = hf.to_release_json();
    for (const char* gone : {"layer_types", "mlp_layer_types", "compress_rates", "rope_parameters", "partial_rotary_factor"})
      EXPECT_FALSE(release.contains(gone)) << gone;
    EXPECT_EQ(release["compress_ratios"].size(), size_t(hf.num_layers));  // no MTP in the fixtures
    EXPECT_EQ(release["compress_ratios"][0], 0);
    EXPECT_EQ(release["compress_ratios"][1], 4);
    EXPECT_EQ(release["compress_ratios"][2], hf.hca_rate);
    EXPECT_FALSE(release.contains("rope_scaling"));
    expect_same_model(ModelConfig::from_json(release, "release.json"), hf);
  }
}

TEST(ModelConfig, TransformersYarnBecomesReleaseRopeScaling) {
  json j = read_json(test::shared_path("models/tiny-a/config.json"));
  j["rope_parameters"]["compress"] = {{"rope_type", "yarn"}, {"rope_theta", 160000.0}, {"factor", 16.0},
                                      {"original_max_position_embeddings", 65536}, {"beta_fast", 32},
                                      {"beta_slow", 1}, {"attention_factor", 1.0}, {"partial_rotary_factor", 0.25}};
  j["num_nextn_predict_layers"] = 1;
  const ModelConfig hf = ModelConfig::from_json(j, "config.json");
  const json release = hf.to_release_json();
  EXPECT_EQ(release["rope_scaling"]["original_max_position_embeddings"], 65536);
  EXPECT_EQ(release["compress_ratios"].size(), 5u);  // 4 layers + one MTP entry
  EXPECT_EQ(release["compress_ratios"][4], 0);
  expect_same_model(ModelConfig::from_json(release, "release.json"), hf);
}

TEST(ModelConfig, AliasesAndPrecedence) {
  json j = read_json(test::shared_path("models/tiny-a/config.json"));
  j["num_local_experts"] = j["n_routed_experts"];
  j.erase("n_routed_experts");
  j["intermediate_size"] = j["moe_intermediate_size"];
  j.erase("moe_intermediate_size");
  j["qk_rope_head_dim"] = 12;  // disagrees: partial_rotary_factor 0.25 * 32 = 8 wins
  j["compress_rate_csa"] = 4;
  j["compress_rate_hca"] = 16;
  j.erase("compress_rates");
  const ModelConfig c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.n_routed_experts, 8);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.rope_dim, 8);
  EXPECT_EQ(c.hca_rate, 16);
  j.erase("partial_rotary_factor");
  j["rope_parameters"]["main"].erase("partial_rotary_factor");
  EXPECT_EQ(ModelConfig::from_json(j, "config.json").rope_dim, 12);
}

TEST(ModelConfig, BrokenConfigsNameTheFileAndTheField) {
  const json base = read_json(test::shared_path("models/tiny-a/config.json"));
  struct Case {
    std::function<void(json&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j.erase("layer_types"); }, "layer_types: missing (and no compress_ratios)"},
      {[](json& j) { j.erase("mlp_layer_types"); }, "mlp_layer_types: missing (and no num_hash_layers)"},
      {[](json& j) { j["layer_types"].erase(0); }, "layer_types: has 3 entries, num_hidden_layers is 4"},
      {[](json& j) { j["layer_types"][1] = "full_attention"; }, "layer_types[1]: unknown layer type \"full_attention\""},
      {[](json& j) { j["mlp_layer_types"][2] = "dense"; }, "mlp_layer_types[2]: unknown MoE layer type \"dense\""},
      {[](json& j) { j["mlp_layer_types"][3] = "hash_moe"; }, "mlp_layer_types[3]: hash_moe after a moe layer"},
      {[](json& j) { j["head_dim"] = 32.5; }, "head_dim: must be an integer, found 32.5"},
      {[](json& j) { j["hidden_size"] = 0; }, "hidden_size: must be positive, found 0"},
      {[](json& j) { j["num_attention_heads"] = -4; }, "num_attention_heads: must be positive"},
      {[](json& j) { j.erase("vocab_size"); }, "vocab_size: missing"},
      {[](json& j) { j["o_groups"] = 3; }, "o_groups: num_attention_heads 4 is not divisible by o_groups 3"},
      {[](json& j) { j["partial_rotary_factor"] = 0.3; }, "partial_rotary_factor: times head_dim 32 is not a positive whole"},
      {[](json& j) { j["num_experts_per_tok"] = 9; }, "num_experts_per_tok: 9 exceeds n_routed_experts 8"},
      {[](json& j) { j["scoring_func"] = "softmax"; }, "scoring_func: unsupported \"softmax\""},
      {[](json& j) { j["num_key_value_heads"] = 4; }, "num_key_value_heads: must be 1"},
      {[](json& j) { j["compress_rates"]["heavily_compressed_attention"] = 4; }, "compress_rates: CSA and HCA rates must be"},
      {[](json& j) { j["compress_rates"]["bogus"] = 4; }, "compress_rates.bogus: unknown layer type"},
      {[](json& j) { j["rope_parameters"]["compress"]["rope_type"] = "linear"; },
       "rope_parameters.compress.rope_type: unsupported rope type \"linear\""},
      {[](json& j) { j["rope_parameters"]["compress"] = {{"rope_type", "yarn"}, {"rope_theta", 1.0}}; },
       "rope_parameters.compress.factor: missing (needed for yarn)"},
      {[](json& j) { j.erase("rope_parameters"); j.erase("rope_theta"); }, "rope_theta: missing"},
      {[](json& j) { j["compress_ratios"] = {0, 4, 4, 4}; }, "compress_ratios: disagrees with layer_types"},
      {[](json& j) { j["num_hash_layers"] = 2; }, "num_hash_layers: disagrees with mlp_layer_types"},
      {[](json& j) { j.erase("layer_types"); j["compress_ratios"] = {0, 4, 16}; },
       "compress_ratios: has 3 entries, expected num_hidden_layers + num_nextn_predict_layers = 4"},
      {[](json& j) { j.erase("layer_types"); j.erase("compress_rates"); j["compress_ratios"] = {0, 4, 16, 8}; },
       "compress_ratios[3]: HCA rate 8 differs from 16"},
      {[](json& j) { j.erase("layer_types"); j["compress_ratios"] = {0, 4, 16, 7}; },
       "compress_ratios[3]: 7 is neither 0, the CSA rate nor the HCA rate"},
      {[](json& j) { j.erase("mlp_layer_types"); j["num_hash_layers"] = 5; }, "num_hash_layers: 5 is outside"},
      {[](json& j) { j["tie_word_embeddings"] = "no"; }, "tie_word_embeddings: must be true or false"},
  };
  for (const Case& c : cases) {
    json j = base;
    c.edit(j);
    const std::string message = config_error(j);
    ASSERT_FALSE(message.empty()) << "accepted, expected: " << c.expected;
    EXPECT_EQ(message.rfind("dir/config.json: ", 0), 0u) << message;
    EXPECT_HAS(message, c.expected);
  }
  EXPECT_HAS(config_error(json::array()), "dir/config.json: config is not a JSON object");
}

TEST(ModelConfig, LoadReportsMissingAndMalformedFiles) {
  const std::string dir = test::make_temp_dir("config");
  try {
    ModelConfig::load(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), dir + "/config.json: cannot open");
  }
  std::ofstream(dir + "/config.json") << "{\"vocab_size\": 12,\n \"hidden_size\": }";
  try {
    ModelConfig::load(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_HAS(e.what(), dir + "/config.json: malformed JSON: parse error at line 2");
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

TEST(ModelConfig, CsaRateOtherThanFourHasNoReleaseSpelling) {
  json j = read_json(test::shared_path("models/tiny-a/config.json"));
  j["compress_rates"]["compressed_sparse_attention"] = 8;
  EXPECT_THROW(ModelConfig::from_json(j, "config.json").to_release_json(), Error);
}

}  // namespace
}  // namespace dsq
