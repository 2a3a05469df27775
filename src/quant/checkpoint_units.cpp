// Walking a checkpoint by units and modules (see checkpoint_units.h).
#include "quant/checkpoint_units.h"

#include <cstdio>
#include <map>
#include <set>

#include "core/error.h"
#include "formats/weight_names.h"
#include "model/weight_format.h"

namespace dsq::quant {

namespace {

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && std::string_view(s).substr(s.size() - tail.size()) == tail;
}

}  // namespace

std::vector<Unit> split_units(const Checkpoint& ckpt) {
  const int64_t L = ckpt.config().num_layers;
  std::vector<Unit> units(size_t(L + 1));
  units[0].label = "globals";
  for (int64_t i = 0; i < L; ++i) {
    units[size_t(i + 1)].label = "layer " + std::to_string(i);
    units[size_t(i + 1)].layer = int(i);
  }
  std::map<int, Unit> mtp;
  for (const std::string& name : ckpt.native_names()) {
    int index = -1;
    if (std::sscanf(name.c_str(), "layers.%d.", &index) == 1) {
      DSQ_CHECK(index >= 0 && index < L, ckpt.describe(name), ": layer ", index, " outside the config's ", L, " layers");
      units[size_t(index + 1)].names.push_back(name);
    } else if (std::sscanf(name.c_str(), "mtp.%d.", &index) == 1) {
      mtp[index].label = "mtp " + std::to_string(index);
      mtp[index].names.push_back(name);
    } else {
      units[0].names.push_back(name);
    }
  }
  for (auto& [index, unit] : mtp) units.push_back(std::move(unit));
  return units;
}

UnitContents unit_contents(const Checkpoint& ckpt, const Unit& unit) {
  std::set<std::string> modules;
  for (const std::string& name : unit.names) {
    if (ends_with(name, ".weight_packed")) modules.insert(name.substr(0, name.size() - 14));
    if (ends_with(name, ".weight") && ckpt.get(name).rank() == 2)
      modules.insert(name.substr(0, name.size() - 7));
  }
  UnitContents c;
  c.modules.assign(modules.begin(), modules.end());
  for (const std::string& name : unit.names) {
    const size_t dot = name.rfind('.');
    bool owned = false;
    if (dot != std::string::npos && modules.count(name.substr(0, dot))) {
      const std::string_view leaf = std::string_view(name).substr(dot + 1);
      owned = leaf == "weight";
      for (std::string_view s : quantized_suffixes()) owned = owned || leaf == s;
    }
    if (!owned) c.passthrough.push_back(name);
  }
  return c;
}

QuantizedMatrix load_module(const Checkpoint& ckpt, const std::string& module) {
  int64_t rows = 0, cols = 0;
  if (ckpt.has(module + ".weight_packed")) {
    const Tensor shape = ckpt.get(module + ".weight_shape");
    DSQ_CHECK(shape.numel() == 2, ckpt.describe(module + ".weight_shape"), ": expected 2 values");
    rows = shape.get_i64(0);
    cols = shape.get_i64(1);
  } else {
    const Tensor w = ckpt.get(module + ".weight");
    rows = w.dim(0);
    cols = (w.dtype() == DType::I8 || w.dtype() == DType::U8) ? 2 * w.dim(1) : w.dim(1);
  }
  return model::load_linear_weight(ckpt, module, rows, cols);
}

}  // namespace dsq::quant
