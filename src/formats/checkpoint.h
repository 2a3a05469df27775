// Checkpoint: a model directory (config + tensors in any supported spelling), with every
// tensor reachable by its native name (weight_names.h). Fused transformers expert tensors
// are split lazily into per-expert views.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "formats/safetensors.h"

namespace dsq {

class Checkpoint {
 public:
  // Opens <dir>: reads config.json and indexes all safetensors files. Throws if two
  // checkpoint tensors map to the same native name.
  static Checkpoint open(const std::string& dir);

  const std::string& directory() const { return store_.directory(); }
  const ModelConfig& config() const { return config_; }
  const TensorStore& store() const { return store_; }

  bool has(const std::string& native_name) const;
  // The tensor, viewed (no copy) where possible. Throws dsq::Error naming the directory and
  // the tensor if it is missing.
  Tensor get(const std::string& native_name) const;
  // Like get(), and checks the dtype is one of the float types and the shape is `shape`:
  // "<file>: tensor <checkpoint name>: expected shape [..], found [..]".
  Tensor get_checked(const std::string& native_name, const Shape& shape) const;
  // The file and spelling a native name came from, for messages.
  std::string describe(const std::string& native_name) const;
  std::vector<std::string> native_names() const;  // sorted
  // Checkpoint tensors the name table does not know (rotary buffers, foreign tensors); they
  // are kept out of the native index.
  const std::vector<std::string>& unrecognized_names() const { return unrecognized_; }

 private:
  struct Source {
    std::string checkpoint_name;
    bool fused = false;
    int expert = 0;
    int part = 0;
    bool split_rows = false;  // gate_up_proj: part 0 is the first half of the rows, 1 the second
  };
  void add(const std::string& native_name, Source source);

  ModelConfig config_;
  TensorStore store_;
  std::map<std::string, Source> sources_;
  std::vector<std::string> unrecognized_;
};

}  // namespace dsq
