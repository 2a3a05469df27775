// compressed-tensors quantization_config: JSON read/write and target matching.
#include "formats/compressed_tensors.h"

#include <map>
#include <mutex>
#include <regex>

#include "core/error.h"

namespace dsq {

using nlohmann::json;

namespace {

template <typename T>
json opt(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

const std::regex& cached_regex(const std::string& pattern) {
  static std::mutex mu;
  static std::map<std::string, std::regex> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(pattern);
  if (it == cache.end()) {
    try {
      it = cache.emplace(pattern, std::regex(pattern, std::regex::ECMAScript)).first;
    } catch (const std::regex_error& e) {
      throw error("target \"re:", pattern, "\": invalid regular expression (", e.what(), ")");
    }
  }
  return it->second;
}

}  // namespace

bool target_matches(const std::string& target, const std::string& module) {
  if (target.rfind("re:", 0) != 0) return target == module;
  return std::regex_search(module, cached_regex(target.substr(3)), std::regex_constants::match_continuous);
}

QuantArgs QuantArgs::int4_group(int group_size, std::optional<std::string> actorder) {
  QuantArgs a;
  a.num_bits = 4;
  a.type = "int";
  a.strategy = "group";
  a.group_size = group_size;
  a.actorder = std::move(actorder);
  a.observer = "minmax";
  return a;
}

QuantArgs QuantArgs::fp8_block(int edge) {
  QuantArgs a;
  a.type = "float";
  a.strategy = "block";
  a.block_structure = std::make_pair(edge, edge);
  a.observer = "minmax";
  return a;
}

QuantArgs QuantArgs::fp8_group_dynamic(int group_size) {
  QuantArgs a;
  a.type = "float";
  a.strategy = "group";
  a.group_size = group_size;
  a.dynamic = true;
  return a;
}

QuantArgs QuantArgs::fp8_token_dynamic() {
  QuantArgs a;
  a.type = "float";
  a.strategy = "token";
  a.dynamic = true;
  return a;
}

json QuantArgs::to_json() const {
  json j;
  j["num_bits"] = num_bits;
  j["type"] = type;
  j["symmetric"] = symmetric;
  j["group_size"] = opt(group_size);
  j["strategy"] = strategy;
  j["block_structure"] = block_structure ? json::array({block_structure->first, block_structure->second})
                                         : json(nullptr);
  j["dynamic"] = dynamic;
  j["actorder"] = opt(actorder);
  j["observer"] = opt(observer);
  j["observer_kwargs"] = json::object();
  return j;
}

QuantArgs QuantArgs::from_json(const json& j, const std::string& where) {
  DSQ_CHECK(j.is_object(), where, ": quantization args must be an object");
  QuantArgs a;
  try {
    a.num_bits = j.at("num_bits").get<int>();
    a.type = j.value("type", std::string("int"));
    a.symmetric = j.value("symmetric", true);
    if (j.contains("group_size") && !j["group_size"].is_null()) a.group_size = j["group_size"].get<int>();
    a.strategy = j.value("strategy", std::string("tensor"));
    if (j.contains("block_structure") && !j["block_structure"].is_null()) {
      const auto& b = j["block_structure"];
      DSQ_CHECK(b.is_array() && b.size() == 2, where, ": block_structure must be [rows, cols]");
      a.block_structure = std::make_pair(b[0].get<int>(), b[1].get<int>());
    }
    const json& dyn = j.contains("dynamic") ? j["dynamic"] : json(false);
    a.dynamic = dyn.is_boolean() ? dyn.get<bool>() : true;  // "local" counts as dynamic
    if (j.contains("actorder") && !j["actorder"].is_null()) a.actorder = j["actorder"].get<std::string>();
    if (j.contains("observer") && !j["observer"].is_null()) a.observer = j["observer"].get<std::string>();
  } catch (const json::exception& e) {
    throw error(where, ": malformed quantization args (", e.what(), ")");
  }
  DSQ_CHECK(a.strategy != "group" || (a.group_size && *a.group_size > 0), where,
            ": strategy group needs a positive group_size");
  DSQ_CHECK((a.strategy == "block") == a.block_structure.has_value(), where,
            ": strategy block and block_structure must come together");
  return a;
}

json QuantScheme::to_json() const {
  json j;
  j["targets"] = targets;
  j["weights"] = weights ? weights->to_json() : json(nullptr);
  j["input_activations"] = input_activations ? input_activations->to_json() : json(nullptr);
  j["output_activations"] = nullptr;
  j["format"] = format;
  return j;
}

QuantScheme QuantScheme::from_json(const json& j, const std::string& where) {
  DSQ_CHECK(j.is_object(), where, ": a config group must be an object");
  QuantScheme s;
  DSQ_CHECK(j.contains("targets") && j["targets"].is_array(), where, ": targets must be a list");
  for (const auto& t : j["targets"]) {
    DSQ_CHECK(t.is_string(), where, ": targets must be strings");
    s.targets.push_back(t.get<std::string>());
  }
  if (j.contains("weights") && !j["weights"].is_null())
    s.weights = QuantArgs::from_json(j["weights"], where + ".weights");
  if (j.contains("input_activations") && !j["input_activations"].is_null())
    s.input_activations = QuantArgs::from_json(j["input_activations"], where + ".input_activations");
  if (j.contains("format") && j["format"].is_string()) s.format = j["format"].get<std::string>();
  return s;
}

json QuantizationConfig::to_json() const {
  json j = extra;
  json groups_json = json::object();
  for (const auto& [name, scheme] : groups) groups_json[name] = scheme.to_json();
  j["config_groups"] = groups_json;
  j["format"] = format;
  j["global_compression_ratio"] = nullptr;
  j["ignore"] = ignore;
  j["kv_cache_scheme"] = nullptr;
  j["quant_method"] = "compressed-tensors";
  j["quantization_status"] = "compressed";
  j["scale_fmt"] = scale_fmt;
  j["sparsity_config"] = json::object();
  j["transform_config"] = json::object();
  j["version"] = version;
  return j;
}

QuantizationConfig QuantizationConfig::from_json(const json& j, const std::string& where) {
  DSQ_CHECK(j.is_object(), where, ": quantization_config must be an object");
  DSQ_CHECK(j.value("quant_method", std::string()) == "compressed-tensors", where,
            ": quant_method is not \"compressed-tensors\"");
  QuantizationConfig c;
  DSQ_CHECK(j.contains("config_groups") && j["config_groups"].is_object(), where,
            ": config_groups missing");
  for (const auto& [name, scheme] : j["config_groups"].items())
    c.groups.emplace_back(name, QuantScheme::from_json(scheme, where + ": config_groups." + name));
  if (j.contains("ignore") && j["ignore"].is_array())
    for (const auto& t : j["ignore"]) c.ignore.push_back(t.get<std::string>());
  c.format = j.value("format", std::string("dense"));
  c.version = j.value("version", std::string());
  c.scale_fmt = j.contains("scale_fmt") && j["scale_fmt"].is_string() ? j["scale_fmt"].get<std::string>() : "";
  static const char* kKnown[] = {"config_groups", "format", "global_compression_ratio", "ignore",
                                 "kv_cache_scheme", "quant_method", "quantization_status", "scale_fmt",
                                 "sparsity_config", "transform_config", "version"};
  for (const auto& [key, value] : j.items())
    if (std::find(std::begin(kKnown), std::end(kKnown), key) == std::end(kKnown)) c.extra[key] = value;
  return c;
}

bool QuantizationConfig::ignored(const std::string& module) const {
  for (const auto& t : ignore)
    if (target_matches(t, module)) return true;
  return false;
}

const std::pair<std::string, QuantScheme>* QuantizationConfig::match(const std::string& module) const {
  if (ignored(module)) return nullptr;
  for (const auto& g : groups)
    for (const auto& t : g.second.targets)
      if (target_matches(t, module)) return &g;
  return nullptr;
}

}  // namespace dsq
