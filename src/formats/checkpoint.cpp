// Checkpoint: config + tensor store + the native-name index (see checkpoint.h).
#include "formats/checkpoint.h"

#include "core/error.h"
#include "formats/weight_names.h"

namespace dsq {

namespace {

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && std::string_view(s).substr(s.size() - tail.size()) == tail;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint ck;
  ck.config_ = ModelConfig::load(dir);
  ck.store_ = TensorStore::open(dir);
  for (const std::string& name : ck.store_.names()) {
    const std::vector<NativeName> natives = to_native_names(name);
    if (natives.empty()) ck.unrecognized_.push_back(name);
    for (const NativeName& native : natives) {
      if (!native.fused_experts) {
        ck.add(native.name, Source{name});
        continue;
      }
      // gate_up_proj [E, 2F, H] holds w1 and w3 of each expert; down_proj [E, H, F] holds w2.
      const bool split = ends_with(name, "gate_up_proj");
      const Shape& shape = ck.store_.info(name).shape;
      if (shape.size() != 3 || (split && shape[1] % 2 != 0))
        throw error(ck.store_.file_of(name), ": tensor ", name, ": fused experts must be ",
                    split ? "[E, 2F, H]" : "[E, H, F]", ", found ", shape_string(shape));
      const size_t at = native.name.find("{e}");
      for (int64_t e = 0; e < shape[0]; ++e) {
        std::string expert_name = native.name;
        expert_name.replace(at, 3, std::to_string(e));
        ck.add(expert_name, Source{name, true, int(e), native.fused_part, split});
      }
    }
  }
  return ck;
}

void Checkpoint::add(const std::string& native_name, Source source) {
  const auto [it, fresh] = sources_.emplace(native_name, source);
  if (!fresh)
    throw error(directory(), ": tensors ", it->second.checkpoint_name, " and ", source.checkpoint_name,
                " both map to ", native_name);
}

bool Checkpoint::has(const std::string& native_name) const { return sources_.count(native_name) != 0; }

Tensor Checkpoint::get(const std::string& native_name) const {
  const auto it = sources_.find(native_name);
  if (it == sources_.end()) throw error(directory(), ": missing tensor ", native_name);
  const Source& s = it->second;
  const Tensor t = store_.get(s.checkpoint_name);
  if (!s.fused) return t;
  const Tensor expert = t.slice_rows(s.expert, s.expert + 1).reshaped({t.dim(1), t.dim(2)});
  if (!s.split_rows) return expert;
  const int64_t half = t.dim(1) / 2;
  return expert.slice_rows(s.part * half, (s.part + 1) * half);
}

Tensor Checkpoint::get_checked(const std::string& native_name, const Shape& shape) const {
  const Tensor t = get(native_name);
  if (!dtype_is_float(t.dtype()))
    throw error(describe(native_name), ": expected a floating-point tensor, found ", dtype_name(t.dtype()));
  if (t.shape() != shape)
    throw error(describe(native_name), ": expected shape ", shape_string(shape), ", found ", shape_string(t.shape()));
  return t;
}

std::string Checkpoint::describe(const std::string& native_name) const {
  const auto it = sources_.find(native_name);
  if (it == sources_.end()) return detail::concat(directory(), ": tensor ", native_name, " (missing)");
  const Source& s = it->second;
  const std::string where = detail::concat(store_.file_of(s.checkpoint_name), ": tensor ", s.checkpoint_name);
  if (!s.fused) return where;
  if (!s.split_rows) return detail::concat(where, "[", s.expert, "]");
  return detail::concat(where, "[", s.expert, "] (", s.part == 0 ? "gate" : "up", " rows)");
}

std::vector<std::string> Checkpoint::native_names() const {
  std::vector<std::string> out;
  out.reserve(sources_.size());
  for (const auto& [name, source] : sources_) out.push_back(name);
  return out;
}

}  // namespace dsq
