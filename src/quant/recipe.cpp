// Recipes: presets, file parsing (JSON / YAML through libyaml), matching, output config.
#include "quant/recipe.h"

#include <yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "core/read_file.h"
#include "core/error.h"

namespace dsq::quant {

using nlohmann::json;

namespace {

const char* kExpertsTarget = R"(re:.*ffn\.experts\.\d+\.(w1|w2|w3|gate_proj|up_proj|down_proj)$)";
const char* kSharedExpertsTarget =
    R"(re:.*ffn\.shared_experts\.(w1|w2|w3|gate_proj|up_proj|down_proj|gate_up_proj)$)";
const char* kSharedExpertsIgnore = R"(re:.*shared_experts.*)";

Recipe w4a16_preset(const std::string& name, QuantMethod experts) {
  Recipe r;
  r.name = name;
  RecipeGroup int4;
  int4.name = "experts_int4";
  int4.targets = {kExpertsTarget};
  int4.method = experts;
  RecipeGroup fp8;
  fp8.name = "attn_fp8_block";
  // Also the vLLM fused name (fused_wqa_wkv), the indexer query and the MTP projections.
  fp8.targets = {R"(re:.*attn\.(fused_wqa_wkv|wq_a|wkv|wq_b|wo_a|wo_b)$)", R"(re:.*attn\.indexer\.wq_b$)",
                 R"(re:.*\.(e_proj|h_proj)$)"};
  fp8.method = QuantMethod::Fp8Block;
  r.groups = {int4, fp8};
  r.ignore = {"lm_head",
              kSharedExpertsIgnore,
              R"(re:.*compressor.*)",
              R"(re:.*indexer\.weights_proj$)",
              R"(re:.*ffn\.gate$)",
              R"(re:.*embed.*)"};
  return r;
}

json scalar_to_json(const yaml_node_t* node) {
  const std::string s(reinterpret_cast<const char*>(node->data.scalar.value), node->data.scalar.length);
  if (node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return s;
  if (s == "true" || s == "True") return true;
  if (s == "false" || s == "False") return false;
  if (s == "null" || s == "~" || s.empty()) return nullptr;
  char* end = nullptr;
  const long long i = std::strtoll(s.c_str(), &end, 10);
  if (end && *end == 0) return i;
  const double d = std::strtod(s.c_str(), &end);
  if (end && *end == 0) return d;
  return s;
}

json node_to_json(yaml_document_t* doc, yaml_node_t* node, int depth, const std::string& where) {
  DSQ_CHECK(node && depth < 64, where, ": YAML nested too deeply");
  switch (node->type) {
    case YAML_SCALAR_NODE: return scalar_to_json(node);
    case YAML_SEQUENCE_NODE: {
      json arr = json::array();
      for (yaml_node_item_t* it = node->data.sequence.items.start; it < node->data.sequence.items.top; ++it)
        arr.push_back(node_to_json(doc, yaml_document_get_node(doc, *it), depth + 1, where));
      return arr;
    }
    case YAML_MAPPING_NODE: {
      json obj = json::object();
      for (yaml_node_pair_t* p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top; ++p) {
        const json key = node_to_json(doc, yaml_document_get_node(doc, p->key), depth + 1, where);
        DSQ_CHECK(key.is_string(), where, ": YAML mapping keys must be strings");
        obj[key.get<std::string>()] = node_to_json(doc, yaml_document_get_node(doc, p->value), depth + 1, where);
      }
      return obj;
    }
    default: throw error(where, ": empty YAML document");
  }
}

QuantMethod parse_method(const json& g, const std::string& where) {
  const std::string scheme = g.value("scheme", std::string("W4A16"));
  if (scheme == "FP8_BLOCK") {
    DSQ_CHECK(!g.contains("method") || g["method"] == "data-free" || g["method"] == "rtn", where,
              ": FP8_BLOCK is data-free; method must be omitted");
    return QuantMethod::Fp8Block;
  }
  DSQ_CHECK(scheme == "W4A16", where, ": unknown scheme \"", scheme, "\" (expected W4A16 or FP8_BLOCK)");
  const std::string method = g.value("method", std::string("gptq"));
  if (method == "gptq") return QuantMethod::Gptq;
  if (method == "rtn") return QuantMethod::Rtn;
  throw error(where, ": unknown method \"", method, "\" (expected gptq or rtn)");
}

}  // namespace

std::string_view quant_method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::Gptq: return "gptq";
    case QuantMethod::Rtn: return "rtn";
    case QuantMethod::Fp8Block: return "fp8-block";
  }
  return "?";
}

json yaml_to_json(const std::string& text, const std::string& where) {
  yaml_parser_t parser;
  yaml_document_t doc;
  DSQ_CHECK(yaml_parser_initialize(&parser), where, ": cannot initialise the YAML parser");
  yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()), text.size());
  if (!yaml_parser_load(&parser, &doc)) {
    const std::string problem = parser.problem ? parser.problem : "syntax error";
    const size_t line = parser.problem_mark.line + 1;
    yaml_parser_delete(&parser);
    throw error(where, ":", line, ": invalid YAML: ", problem);
  }
  json out;
  try {
    out = node_to_json(&doc, yaml_document_get_root_node(&doc), 0, where);
  } catch (...) {
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    throw;
  }
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  return out;
}

const RecipeGroup* Recipe::match(const std::string& module) const {
  for (const auto& t : ignore)
    if (target_matches(t, module)) return nullptr;
  for (const auto& g : groups)
    for (const auto& t : g.targets)
      if (target_matches(t, module)) return &g;
  return nullptr;
}

bool Recipe::needs_calibration() const {
  for (const auto& g : groups)
    if (g.method == QuantMethod::Gptq) return true;
  return false;
}

void Recipe::quantize_shared_experts() {
  RecipeGroup* int4 = nullptr;
  for (auto& g : groups)
    if (g.method != QuantMethod::Fp8Block) int4 = &g;
  DSQ_CHECK(int4, "recipe ", name, ": has no INT4 group to add the shared experts to");
  int4->targets.push_back(kSharedExpertsTarget);
  std::erase(ignore, std::string(kSharedExpertsIgnore));
  name += "+shared";
}

QuantizationConfig Recipe::output_config() const {
  QuantizationConfig c;
  for (const auto& g : groups) {
    QuantScheme s;
    s.targets = g.targets;
    if (g.method == QuantMethod::Fp8Block) {
      s.weights = QuantArgs::fp8_block();
      s.input_activations = QuantArgs::fp8_group_dynamic();
      s.format = "float-quantized";
    } else {
      // RTN is GPTQ without reordering; the stored layout is the same either way.
      const bool static_order = g.method == QuantMethod::Gptq && g.actorder;
      s.weights = QuantArgs::int4_group(int(g.group_size), static_order ? std::optional<std::string>("static")
                                                                         : std::nullopt);
      s.format = "pack-quantized";
    }
    c.groups.emplace_back(g.name, s);
  }
  c.ignore = ignore;
  if (std::find(c.ignore.begin(), c.ignore.end(), "lm_head") == c.ignore.end()) c.ignore.push_back("lm_head");
  return c;
}

json Recipe::to_json() const {
  json groups_json = json::object();
  for (const auto& g : groups) {
    json j;
    j["targets"] = g.targets;
    if (g.method == QuantMethod::Fp8Block) {
      j["scheme"] = "FP8_BLOCK";
    } else {
      j["scheme"] = "W4A16";
      j["method"] = std::string(quant_method_name(g.method));
      j["group_size"] = g.group_size;
      if (g.method == QuantMethod::Gptq) {
        j["dampening_frac"] = g.dampening;
        j["actorder"] = g.actorder ? json("static") : json(nullptr);
      }
    }
    groups_json[g.name] = j;
  }
  return json{{"name", name}, {"config_groups", groups_json}, {"ignore", ignore}};
}

Recipe Recipe::from_json(const json& j, const std::string& where) {
  DSQ_CHECK(j.is_object() && j.contains("config_groups") && j["config_groups"].is_object(), where,
            ": a recipe needs a config_groups mapping");
  Recipe r;
  r.name = j.value("name", where);
  try {
    for (const auto& [name, g] : j["config_groups"].items()) {
      const std::string at = where + ": config_groups." + name;
      DSQ_CHECK(g.is_object(), at, ": must be a mapping");
      RecipeGroup group;
      group.name = name;
      DSQ_CHECK(g.contains("targets") && g["targets"].is_array() && !g["targets"].empty(), at,
                ": targets must be a non-empty list");
      for (const auto& t : g["targets"]) {
        DSQ_CHECK(t.is_string(), at, ": targets must be strings");
        group.targets.push_back(t.get<std::string>());
        target_matches(group.targets.back(), "");  // reports an invalid regex now, with its text
      }
      group.method = parse_method(g, at);
      group.group_size = g.value("group_size", int64_t(128));
      DSQ_CHECK(group.group_size > 0 && group.group_size % 8 == 0, at,
                ": group_size must be a positive multiple of 8, got ", group.group_size);
      group.dampening = g.value("dampening_frac", 0.1);
      DSQ_CHECK(group.dampening >= 0.0, at, ": dampening_frac must be >= 0");
      if (g.contains("actorder")) {
        const json& a = g["actorder"];
        DSQ_CHECK(a.is_null() || a == "static" || a == "weight", at,
                  ": actorder must be static or null (group ordering needs g_idx, which dsq does not write)");
        group.actorder = !a.is_null();
      }
      r.groups.push_back(group);
    }
    if (j.contains("ignore")) {
      DSQ_CHECK(j["ignore"].is_array(), where, ": ignore must be a list");
      for (const auto& t : j["ignore"]) {
        DSQ_CHECK(t.is_string(), where, ": ignore entries must be strings");
        r.ignore.push_back(t.get<std::string>());
        target_matches(r.ignore.back(), "");
      }
    }
  } catch (const json::exception& e) {
    throw error(where, ": malformed recipe (", e.what(), ")");
  }
  return r;
}

Recipe Recipe::preset(std::string_view name) {
  if (name == "w4a16-fp8") return w4a16_preset("w4a16-fp8", QuantMethod::Gptq);
  if (name == "w4a16-rtn") return w4a16_preset("w4a16-rtn", QuantMethod::Rtn);
  throw error("unknown recipe preset \"", name, "\" (presets: w4a16-fp8, w4a16-rtn; or a .json/.yaml file)");
}

Recipe Recipe::load(const std::string& preset_or_path) {
  if (preset_or_path == "w4a16-fp8" || preset_or_path == "w4a16-rtn") return preset(preset_or_path);
  DSQ_CHECK(std::filesystem::is_regular_file(preset_or_path), preset_or_path,
            ": no such recipe file, and not a preset (w4a16-fp8, w4a16-rtn)");
  const std::string text = read_file(preset_or_path);
  const bool is_json = preset_or_path.size() >= 5 && preset_or_path.substr(preset_or_path.size() - 5) == ".json";
  json j;
  if (is_json) {
    try {
      j = json::parse(text);
    } catch (const json::parse_error& e) {
      throw error(preset_or_path, ": invalid JSON (", e.what(), ")");
    }
  } else {
    j = yaml_to_json(text, preset_or_path);
  }
  return from_json(j, preset_or_path);
}

}  // namespace dsq::quant
