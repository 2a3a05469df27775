// Recipes: which linear gets which quantization, in the shape of llm-compressor's
// GPTQModifier(config_groups=..., ignore=...): named groups of targets (exact module names or
// "re:" regexes, matched as vLLM matches them) -> scheme + method, and an ignore list that
// wins over every target. Modules matched by no group stay in their original precision
// (BF16; the release's FP8 shared experts are dequantized to BF16).
//
// Recipe file (JSON, or the same structure in YAML):
//   config_groups:
//     experts_int4:
//       targets: ['re:.*ffn\.experts\.\d+\.(w1|w2|w3|gate_proj|up_proj|down_proj)$']
//       scheme: W4A16          # W4A16 (int4 symmetric group) | FP8_BLOCK (128x128, data-free)
//       method: gptq           # W4A16 only: gptq | rtn
//       group_size: 128        # W4A16
//       dampening_frac: 0.1    # gptq
//       actorder: static       # gptq: static | null
//   ignore: ['re:.*compressor.*', ...]
//
// Presets: "w4a16-fp8" (the model card's recipe, checkpoint-formats.md §6) and "w4a16-rtn"
// (the same with round-to-nearest experts: no calibration).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/compressed_tensors.h"

namespace dsq::quant {

enum class QuantMethod { Gptq, Rtn, Fp8Block };
std::string_view quant_method_name(QuantMethod m);  // "gptq" / "rtn" / "fp8-block"

struct RecipeGroup {
  std::string name;
  std::vector<std::string> targets;
  QuantMethod method = QuantMethod::Gptq;
  int64_t group_size = 128;
  double dampening = 0.1;
  bool actorder = true;
};

struct Recipe {
  std::string name;
  std::vector<RecipeGroup> groups;
  std::vector<std::string> ignore;

  // The group of a module ("layers.3.ffn.experts.5.w1"), or nullptr when it is ignored or
  // matched by no group.
  const RecipeGroup* match(const std::string& module) const;
  bool needs_calibration() const;  // any GPTQ group

  // Moves the shared experts from the ignore list into the INT4 group (W4A16 presets).
  void quantize_shared_experts();

  // The compressed-tensors quantization_config this recipe produces.
  QuantizationConfig output_config() const;

  // Canonical JSON (a recipe file that reproduces this recipe exactly).
  nlohmann::json to_json() const;
  static Recipe from_json(const nlohmann::json& j, const std::string& where);
  static Recipe preset(std::string_view name);  // throws for an unknown name
  // A preset name, or a path to a .json/.yaml/.yml recipe file.
  static Recipe load(const std::string& preset_or_path);
};

// Parses YAML text into JSON (mappings, sequences, scalars: plain true/false/null/numbers
// become JSON values, everything else strings). `where` names the source in errors.
nlohmann::json yaml_to_json(const std::string& text, const std::string& where);

}  // namespace dsq::quant
