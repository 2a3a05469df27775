// A checkpoint seen the way the quantizer and the converters walk it: in units (the global
// tensors, each decoder layer, each MTP block), each unit split into linear modules (every
// "<m>.weight" matrix or "<m>.weight_packed", whatever format it is stored in) and the
// other tensors, which pass through unchanged.
#pragma once

#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/quantized_matrix.h"

namespace dsq::quant {

struct Unit {
  std::string label;  // "globals", "layer 3", "mtp 0"
  int layer = -1;     // decoder layer index, or -1
  std::vector<std::string> names;  // native tensor names
};

// Globals first, then layers 0..L-1, then MTP blocks. Tensors outside the name table are
// not in any unit (Checkpoint::unrecognized_names()).
std::vector<Unit> split_units(const Checkpoint& ckpt);

struct UnitContents {
  std::vector<std::string> modules;      // module names ("layers.3.attn.wq_a"), sorted
  std::vector<std::string> passthrough;  // every other tensor of the unit
};

UnitContents unit_contents(const Checkpoint& ckpt, const Unit& unit);

// The stored matrix of a module, in whatever format the checkpoint holds it.
QuantizedMatrix load_module(const Checkpoint& ckpt, const std::string& module);

}  // namespace dsq::quant
