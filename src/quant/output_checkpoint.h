// The quantizer's output directory: a sharded safetensors checkpoint written one unit
// (a decoder layer, or the global tensors) at a time, every file atomically, plus the
// index, config.json and the copied tokenizer / generation config files.
//
// Shards are named model-<k>-of-<n>.safetensors (1-based, five digits, as HF names them);
// the number of units is known up front, so a shard's name never changes and a finished
// shard is never rewritten unless its unit is redone after a crash (with the same bytes).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"

namespace dsq::quant {

class OutputCheckpoint {
 public:
  OutputCheckpoint(std::string dir, int num_shards);

  const std::string& directory() const { return dir_; }
  int num_shards() const { return num_shards_; }
  std::string shard_name(int shard) const;  // 0-based shard -> file name
  bool has_shard(int shard) const;
  // Writes shard `shard` atomically; tensors are sorted by name first.
  void write_shard(int shard, std::vector<NamedTensor> tensors) const;
  // Writes model.safetensors.index.json from the shards' headers, config.json, and copies
  // the tokenizer and generation config files that exist in `source_dir`.
  void finish(const nlohmann::json& config, const std::string& source_dir) const;

 private:
  std::string dir_;
  int num_shards_;
};

// The files copied verbatim from the input model directory.
const std::vector<std::string>& copied_model_files();

// Copies `from` to `to` atomically (same bytes).
void copy_file_atomically(const std::string& from, const std::string& to);

}  // namespace dsq::quant
