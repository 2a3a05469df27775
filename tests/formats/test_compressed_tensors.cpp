// compressed-tensors quantization_config: the JSON of each scheme exactly as
// checkpoint-formats.md §2.1/§4/§6 specifies it, the round trip, and vLLM's target rules.
#include <gtest/gtest.h>

#include "core/error.h"
#include "formats/compressed_tensors.h"

namespace dsq {
namespace {

using nlohmann::json;

TEST(CompressedTensors, Int4GroupArgsJson) {
  const json expected = json::parse(R"({
    "num_bits": 4, "type": "int", "symmetric": true, "group_size": 128, "strategy": "group",
    "block_structure": null, "dynamic": false, "actorder": "static", "observer": "minmax",
    "observer_kwargs": {}})");
  EXPECT_EQ(QuantArgs::int4_group().to_json(), expected);
}

TEST(CompressedTensors, Fp8BlockSchemeJson) {
  QuantScheme s;
  s.targets = {"re:.*attn\\.wq_a$"};
  s.weights = QuantArgs::fp8_block();
  s.input_activations = QuantArgs::fp8_group_dynamic();
  s.format = "float-quantized";
  const json expected = json::parse(R"({
    "targets": ["re:.*attn\\.wq_a$"],
    "weights": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
                "strategy": "block", "block_structure": [128, 128], "dynamic": false,
                "actorder": null, "observer": "minmax", "observer_kwargs": {}},
    "input_activations": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": 128,
                          "strategy": "group", "block_structure": null, "dynamic": true,
                          "actorder": null, "observer": null, "observer_kwargs": {}},
    "output_activations": null,
    "format": "float-quantized"})");
  EXPECT_EQ(s.to_json(), expected);
}

TEST(CompressedTensors, W4a8ActivationArgsJson) {
  // checkpoint-formats.md §4: {num_bits 8, type float, strategy token, dynamic true,
  // symmetric true, group_size null, block_structure null, actorder null, observer null}.
  const json expected = json::parse(R"({
    "num_bits": 8, "type": "float", "symmetric": true, "group_size": null, "strategy": "token",
    "block_structure": null, "dynamic": true, "actorder": null, "observer": null,
    "observer_kwargs": {}})");
  EXPECT_EQ(QuantArgs::fp8_token_dynamic().to_json(), expected);
}

TEST(CompressedTensors, TopLevelConfigKeysAndRoundTrip) {
  QuantizationConfig c;
  QuantScheme experts;
  experts.targets = {"re:.*ffn\\.experts\\.\\d+\\.(w1|w2|w3|gate_proj|up_proj|down_proj)$"};
  experts.weights = QuantArgs::int4_group();
  experts.format = "pack-quantized";
  c.groups.emplace_back("experts_int4", experts);
  c.ignore = {"lm_head", "re:.*compressor.*"};
  c.extra["_w4a8_conversion"] = {{"from", "x"}};
  const json j = c.to_json();
  EXPECT_EQ(j["quant_method"], "compressed-tensors");
  EXPECT_EQ(j["format"], "mixed-precision");
  EXPECT_EQ(j["quantization_status"], "compressed");
  EXPECT_EQ(j["scale_fmt"], "ue8m0");
  EXPECT_TRUE(j["kv_cache_scheme"].is_null());
  EXPECT_TRUE(j["global_compression_ratio"].is_null());
  EXPECT_EQ(j["sparsity_config"], json::object());
  EXPECT_EQ(j["transform_config"], json::object());
  EXPECT_EQ(j["config_groups"]["experts_int4"]["format"], "pack-quantized");
  EXPECT_FALSE(j["config_groups"]["experts_int4"]["weights"].contains("scale_dtype"));
  const QuantizationConfig back = QuantizationConfig::from_json(j, "config.json");
  EXPECT_EQ(back.to_json(), j);
  ASSERT_EQ(back.groups.size(), 1u);
  EXPECT_EQ(*back.groups[0].second.weights, QuantArgs::int4_group());
}

TEST(CompressedTensors, TargetsFollowVllmMatchingRules) {
  const std::string experts = "re:.*ffn\\.experts\\.\\d+\\.(w1|w2|w3|gate_proj|up_proj|down_proj)$";
  EXPECT_TRUE(target_matches(experts, "layers.3.ffn.experts.7.w2"));
  EXPECT_TRUE(target_matches(experts, "model.layers.3.ffn.experts.0.gate_proj"));  // vLLM probe
  EXPECT_FALSE(target_matches(experts, "layers.3.ffn.experts.7.w2.weight"));  // anchored at $
  EXPECT_FALSE(target_matches(experts, "layers.3.ffn.shared_experts.w2"));
  // re.match anchors at the start: a regex without a leading .* must match from there.
  EXPECT_FALSE(target_matches("re:attn\\.wq_a$", "layers.0.attn.wq_a"));
  EXPECT_TRUE(target_matches("lm_head", "lm_head"));
  EXPECT_FALSE(target_matches("lm_head", "model.lm_head"));
  EXPECT_THROW(target_matches("re:(", "x"), Error);
}

TEST(CompressedTensors, IgnoreWinsOverTargets) {
  QuantizationConfig c;
  QuantScheme s;
  s.targets = {"re:.*wkv$"};
  s.weights = QuantArgs::fp8_block();
  c.groups.emplace_back("g", s);
  c.ignore = {"re:.*compressor.*"};
  EXPECT_NE(c.match("layers.1.attn.wkv"), nullptr);
  EXPECT_EQ(c.match("layers.1.attn.compressor.wkv"), nullptr);
  EXPECT_TRUE(c.ignored("layers.1.attn.compressor.wkv"));
}

TEST(CompressedTensors, MalformedConfigNamesTheProblem) {
  const json bad = json::parse(R"({"quant_method": "compressed-tensors",
    "config_groups": {"g": {"targets": ["x"], "weights": {"num_bits": 4, "strategy": "group"}}}})");
  try {
    QuantizationConfig::from_json(bad, "out/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out/config.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("group_size"), std::string::npos);
  }
}

}  // namespace
}  // namespace dsq
