// Counting a checkpoint's tensors per module kind and dtype (see weight_inventory.h).
#include "formats/weight_inventory.h"

#include "formats/weight_names.h"

namespace dsq {

namespace {

bool starts_with(std::string_view s, std::string_view head) { return s.substr(0, head.size()) == head; }
bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

// "layers.3.attn.wq_a.weight" -> "attn.wq_a.weight"; global names are returned unchanged.
std::string_view strip_block_prefix(std::string_view name) {
  if (!starts_with(name, "layers.")) return name;
  const size_t dot = name.find('.', 7);
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

// The leaf suffix after the module, e.g. "weight_packed" for "...w1.weight_packed".
std::string_view suffix_of(std::string_view name) {
  const size_t dot = name.rfind('.');
  return dot == std::string_view::npos ? std::string_view() : name.substr(dot + 1);
}

bool is_quantization_metadata(std::string_view suffix) {
  for (std::string_view s : quantized_suffixes()) {
    if (s == suffix && s != "weight_packed") return true;
  }
  return false;
}

// Logical weights a stored tensor encodes (weight_inventory.h).
int64_t logical_parameters(const TensorStore& store, const std::string& name) {
  const TensorInfo& info = store.info(name);
  const int64_t numel = shape_numel(info.shape);
  const std::string_view suffix = suffix_of(name);
  if (is_quantization_metadata(suffix)) return 0;
  const std::string module = name.substr(0, name.size() - suffix.size());  // keeps the trailing '.'
  if (suffix == "weight_packed") {
    const std::string shape_name = module + "weight_shape";
    if (store.contains(shape_name) && store.info(shape_name).shape == Shape{2}) {
      const Tensor shape = store.get(shape_name);
      if (shape.get_i64(0) > 0 && shape.get_i64(1) > 0) return shape.get_i64(0) * shape.get_i64(1);
    }
    return numel * 8;  // int4: eight per int32 word
  }
  // The release's MXFP4 experts: bytes of two e2m1 codes, one E8M0 scale per 32 weights.
  if (suffix == "weight" && (info.dtype == DType::I8 || info.dtype == DType::U8) && store.contains(module + "scale")) {
    const TensorInfo& scale = store.info(module + "scale");
    if (scale.dtype == DType::F8_E8M0 && !scale.shape.empty() && !info.shape.empty() &&
        scale.shape.back() * 32 == info.shape.back() * 2)
      return numel * 2;
  }
  return numel;
}

}  // namespace

std::string_view module_kind_name(ModuleKind k) {
  switch (k) {
    case ModuleKind::Embedding: return "embedding";
    case ModuleKind::Head: return "head";
    case ModuleKind::Attention: return "attention";
    case ModuleKind::Compressor: return "compressor";
    case ModuleKind::Indexer: return "indexer";
    case ModuleKind::RoutedExperts: return "routed experts";
    case ModuleKind::SharedExperts: return "shared experts";
    case ModuleKind::Router: return "router";
    case ModuleKind::MHC: return "mHC";
    case ModuleKind::Norms: return "norms";
    case ModuleKind::Mtp: return "MTP";
    case ModuleKind::Other: return "other";
  }
  return "?";
}

ModuleKind module_kind_of(std::string_view native_name) {
  if (starts_with(native_name, "mtp.")) return ModuleKind::Mtp;
  const std::string_view leaf = strip_block_prefix(native_name);
  if (starts_with(leaf, "embed.")) return ModuleKind::Embedding;
  if (starts_with(leaf, "head.")) return ModuleKind::Head;
  if (starts_with(leaf, "hc_")) return ModuleKind::MHC;
  if (ends_with(leaf, "norm.weight")) return ModuleKind::Norms;
  if (starts_with(leaf, "attn.indexer.")) return ModuleKind::Indexer;
  if (starts_with(leaf, "attn.compressor.")) return ModuleKind::Compressor;
  if (starts_with(leaf, "attn.")) return ModuleKind::Attention;
  if (starts_with(leaf, "ffn.experts.")) return ModuleKind::RoutedExperts;
  if (starts_with(leaf, "ffn.shared_experts.")) return ModuleKind::SharedExperts;
  if (starts_with(leaf, "ffn.gate.")) return ModuleKind::Router;
  return ModuleKind::Other;
}

WeightInventory take_inventory(const Checkpoint& checkpoint) {
  const TensorStore& store = checkpoint.store();
  WeightInventory inventory;
  for (const std::string& name : store.names()) {
    const TensorInfo& info = store.info(name);
    const InventoryCount count{1, logical_parameters(store, name), info.end - info.begin};
    const auto native = to_native_name(name);
    inventory.by_kind[native ? module_kind_of(native->name) : ModuleKind::Other].add(count);
    inventory.by_dtype[std::string(dtype_safetensors_name(info.dtype))].add(count);
    inventory.total.add(count);
  }
  return inventory;
}

}  // namespace dsq
