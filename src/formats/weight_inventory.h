// WeightInventory: what a checkpoint holds, counted per module kind (embedding, attention,
// routed experts, ...) and per stored dtype, for `dsq info` and for sanity checks.
//
// Bytes are the stored bytes of each tensor. Parameters are logical weights: a quantized
// tensor counts the weights it encodes (an int4 `weight_packed` int32 word holds 8, an MXFP4
// byte of the release holds 2), and scale-like siblings (`scale`, `weight_scale`,
// `weight_shape`, ...) count bytes but no parameters. Fused transformers expert tensors are
// counted once, as stored.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "formats/checkpoint.h"

namespace dsq {

enum class ModuleKind {
  Embedding,
  Head,
  Attention,      // q/kv/o projections and attention sinks
  Compressor,     // the main KV compressor of CSA/HCA layers
  Indexer,        // the Lightning indexer, its own compressor included
  RoutedExperts,
  SharedExperts,
  Router,         // gate weight, bias, hash table
  MHC,            // hyper-connection mixing (hc_*)
  Norms,          // every RMSNorm weight
  Mtp,            // everything under mtp.{i}.
  Other,          // tensors the name table does not know
};

std::string_view module_kind_name(ModuleKind k);  // "routed experts", ...
// The kind of a native tensor name (weight_names.h), quantized siblings included.
ModuleKind module_kind_of(std::string_view native_name);

struct InventoryCount {
  int64_t tensors = 0;
  int64_t parameters = 0;
  uint64_t bytes = 0;

  void add(const InventoryCount& other) {
    tensors += other.tensors;
    parameters += other.parameters;
    bytes += other.bytes;
  }
};

struct WeightInventory {
  std::map<ModuleKind, InventoryCount> by_kind;
  std::map<std::string, InventoryCount> by_dtype;  // keyed by the safetensors dtype name
  InventoryCount total;
};

WeightInventory take_inventory(const Checkpoint& checkpoint);

}  // namespace dsq
