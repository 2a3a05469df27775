// compressed-tensors schemes and the `quantization_config` block of config.json
// (shared/docs/checkpoint-formats.md §2.1, §4, §6): the structs, their exact JSON form, and
// target/ignore matching as vLLM does it (exact name, or "re:" + a regex anchored at the
// start like Python's re.match).
//
// The JSON writer emits only the QuantizationArgs fields every compressed-tensors version
// since 0.11 accepts (no scale_dtype / zp_dtype: they break older loaders, which forbid
// extra fields).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsq {

struct QuantArgs {
  int num_bits = 8;
  std::string type = "int";         // "int" | "float"
  bool symmetric = true;
  std::optional<int> group_size;
  std::string strategy = "tensor";  // tensor | channel | group | block | token
  std::optional<std::pair<int, int>> block_structure;
  bool dynamic = false;
  std::optional<std::string> actorder;  // "static" | "weight" | "group" | null
  std::optional<std::string> observer;

  // The presets of compressed-tensors' quant_scheme.py that dsq writes.
  static QuantArgs int4_group(int group_size = 128, std::optional<std::string> actorder = "static");
  static QuantArgs fp8_block(int edge = 128);
  static QuantArgs fp8_group_dynamic(int group_size = 128);  // FP8_BLOCK's input activations
  static QuantArgs fp8_token_dynamic();                      // W4A8's input activations

  nlohmann::json to_json() const;
  static QuantArgs from_json(const nlohmann::json& j, const std::string& where);
  bool operator==(const QuantArgs&) const = default;
};

struct QuantScheme {
  std::vector<std::string> targets;
  std::optional<QuantArgs> weights;
  std::optional<QuantArgs> input_activations;
  std::string format;  // "pack-quantized", "float-quantized", ...

  nlohmann::json to_json() const;
  static QuantScheme from_json(const nlohmann::json& j, const std::string& where);
};

struct QuantizationConfig {
  std::vector<std::pair<std::string, QuantScheme>> groups;  // name -> scheme, in order
  std::vector<std::string> ignore;
  std::string format = "mixed-precision";
  std::string version = "0.13.0";
  std::string scale_fmt = "ue8m0";  // older vLLM DeepSeek-V4 attention reads this key
  nlohmann::json extra = nlohmann::json::object();  // other keys kept verbatim (provenance)

  nlohmann::json to_json() const;
  static QuantizationConfig from_json(const nlohmann::json& j, const std::string& where);

  // The group whose targets match `module` (nullptr if none or if it is ignored).
  const std::pair<std::string, QuantScheme>* match(const std::string& module) const;
  bool ignored(const std::string& module) const;
};

// vLLM's rule for one target or ignore entry: "re:<regex>" matches if the regex matches
// at the start of `module` (Python re.match); anything else must equal it.
bool target_matches(const std::string& target, const std::string& module);

}  // namespace dsq
