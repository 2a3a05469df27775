// Recipes: the presets route every DeepSeek-V4 linear where the model card says, the
// output config is checkpoint-formats.md §6 verbatim, and files (JSON/YAML) parse to the
// same recipe.
#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "quant/recipe.h"
#include "support/paths.h"

namespace dsq::quant {
namespace {

using nlohmann::json;

std::string method_of(const Recipe& r, const std::string& module) {
  const RecipeGroup* g = r.match(module);
  return g ? std::string(quant_method_name(g->method)) : "bf16";
}

TEST(Recipe, W4a16Fp8PresetRoutesEveryLinearAsTheModelCardSays) {
  const Recipe r = Recipe::preset("w4a16-fp8");
  for (const char* m : {"layers.2.ffn.experts.0.w1", "layers.2.ffn.experts.15.w2", "layers.0.ffn.experts.3.w3"})
    EXPECT_EQ(method_of(r, m), "gptq") << m;
  for (const char* m : {"layers.1.attn.wq_a", "layers.1.attn.wq_b", "layers.1.attn.wkv", "layers.1.attn.wo_a",
                        "layers.1.attn.wo_b", "layers.1.attn.indexer.wq_b"})
    EXPECT_EQ(method_of(r, m), "fp8-block") << m;
  for (const char* m : {"layers.1.ffn.shared_experts.w1", "layers.1.ffn.shared_experts.w2", "embed", "head",
                        "layers.1.ffn.gate", "layers.1.attn.compressor.wkv", "layers.1.attn.compressor.wgate",
                        "layers.1.attn.indexer.compressor.wkv", "layers.1.attn.indexer.weights_proj"})
    EXPECT_EQ(method_of(r, m), "bf16") << m;
  EXPECT_TRUE(r.needs_calibration());
  EXPECT_FALSE(Recipe::preset("w4a16-rtn").needs_calibration());
  EXPECT_EQ(method_of(Recipe::preset("w4a16-rtn"), "layers.2.ffn.experts.0.w1"), "rtn");
}

TEST(Recipe, SharedExpertsOptionMovesThemToInt4) {
  Recipe r = Recipe::preset("w4a16-fp8");
  r.quantize_shared_experts();
  EXPECT_EQ(method_of(r, "layers.1.ffn.shared_experts.w2"), "gptq");
  EXPECT_EQ(method_of(r, "layers.1.ffn.experts.0.w2"), "gptq");
  // vLLM's fused shared-expert name must match the INT4 group too.
  EXPECT_NE(r.output_config().match("model.layers.1.ffn.shared_experts.gate_up_proj"), nullptr);
}

TEST(Recipe, PresetOutputConfigIsTheSpecifiedQuantizationConfig) {
  // checkpoint-formats.md §6, with dsq's two additions: the MTP projections in the FP8 group.
  const json expected = json::parse(R"JSON({
    "config_groups": {
      "attn_fp8_block": {
        "targets": ["re:.*attn\\.(fused_wqa_wkv|wq_a|wkv|wq_b|wo_a|wo_b)$", "re:.*attn\\.indexer\\.wq_b$",
                    "re:.*\\.(e_proj|h_proj)$"],
        "weights": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
                    "strategy": "block", "block_structure": [128, 128], "dynamic": false,
                    "actorder": null, "observer": "minmax", "observer_kwargs": {}},
        "input_activations": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": 128,
                              "strategy": "group", "block_structure": null, "dynamic": true,
                              "actorder": null, "observer": null, "observer_kwargs": {}},
        "output_activations": null, "format": "float-quantized"},
      "experts_int4": {
        "targets": ["re:.*ffn\\.experts\\.\\d+\\.(w1|w2|w3|gate_proj|up_proj|down_proj)$"],
        "weights": {"num_bits": 4, "type": "int", "symmetric": true, "group_size": 128,
                    "strategy": "group", "block_structure": null, "dynamic": false,
                    "actorder": "static", "observer": "minmax", "observer_kwargs": {}},
        "input_activations": null, "output_activations": null, "format": "pack-quantized"}},
    "format": "mixed-precision", "global_compression_ratio": null,
    "ignore": ["lm_head", "re:.*shared_experts.*", "re:.*compressor.*", "re:.*indexer\\.weights_proj$",
               "re:.*ffn\\.gate$", "re:.*embed.*"],
    "kv_cache_scheme": null, "quant_method": "compressed-tensors", "quantization_status": "compressed",
    "scale_fmt": "ue8m0", "sparsity_config": {}, "transform_config": {}, "version": "0.13.0"})JSON");
  EXPECT_EQ(Recipe::preset("w4a16-fp8").output_config().to_json(), expected);
}

TEST(Recipe, VllmFusedAndProbedNamesResolve) {
  const QuantizationConfig c = Recipe::preset("w4a16-fp8").output_config();
  // vLLM probes <moe>.experts.0.{gate,up,down}_proj; all must hit the INT4 group.
  for (const char* m : {"model.layers.3.ffn.experts.0.gate_proj", "model.layers.3.ffn.experts.0.up_proj",
                        "model.layers.3.ffn.experts.0.down_proj"}) {
    const auto* g = c.match(m);
    ASSERT_NE(g, nullptr) << m;
    EXPECT_EQ(g->first, "experts_int4");
  }
  ASSERT_NE(c.match("model.layers.3.attn.fused_wqa_wkv"), nullptr);
  EXPECT_TRUE(c.ignored("model.layers.3.attn.compressor.fused_wkv_wgate"));
  EXPECT_TRUE(c.ignored("model.layers.3.attn.indexer.weights_proj"));
  EXPECT_TRUE(c.ignored("model.layers.3.ffn.shared_experts.gate_up_proj"));
  EXPECT_TRUE(c.ignored("model.layers.3.ffn.gate"));
}

TEST(Recipe, YamlAndJsonFilesGiveTheSameRecipe) {
  const std::string dir = test::make_temp_dir("recipe");
  const std::string yaml = R"(# experts by GPTQ, wq_a by FP8
config_groups:
  experts:
    targets: ['re:.*experts\.\d+\.w[123]$']
    scheme: W4A16
    method: gptq
    dampening_frac: 0.05
    actorder: null
  attn:
    targets:
      - layers.0.attn.wq_a
    scheme: FP8_BLOCK
ignore: [lm_head]
)";
  std::ofstream(dir + "/r.yaml") << yaml;
  const Recipe a = Recipe::load(dir + "/r.yaml");
  std::ofstream(dir + "/r.json") << a.to_json().dump();
  const Recipe b = Recipe::load(dir + "/r.json");
  EXPECT_EQ(a.to_json(), b.to_json());
  ASSERT_EQ(a.groups.size(), 2u);
  const RecipeGroup* g = a.match("layers.4.ffn.experts.2.w3");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->method, QuantMethod::Gptq);
  EXPECT_DOUBLE_EQ(g->dampening, 0.05);
  EXPECT_FALSE(g->actorder);
  EXPECT_EQ(a.match("layers.0.attn.wq_a")->method, QuantMethod::Fp8Block);
  EXPECT_EQ(a.match("layers.1.attn.wq_a"), nullptr);
}

TEST(Recipe, BadRecipesGiveOneClearLine) {
  const std::string dir = test::make_temp_dir("recipe-bad");
  auto message = [&](const std::string& text) {
    std::ofstream(dir + "/bad.yaml") << text;
    try {
      Recipe::load(dir + "/bad.yaml");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("config_groups: {g: {targets: [x], scheme: W3A16}}").find("unknown scheme"), std::string::npos);
  EXPECT_NE(message("config_groups: {g: {targets: ['re:(']}}").find("invalid regular expression"), std::string::npos);
  EXPECT_NE(message("config_groups: [\n").find("invalid YAML"), std::string::npos);
  EXPECT_NE(message("config_groups: {g: {targets: [x], actorder: group}}").find("actorder"), std::string::npos);
  EXPECT_THROW(Recipe::load("w4a17"), Error);
}

}  // namespace
}  // namespace dsq::quant
