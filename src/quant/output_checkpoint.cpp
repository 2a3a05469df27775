// OutputCheckpoint: shards, index, config and side files (see output_checkpoint.h).
#include "quant/output_checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/read_file.h"
#include "core/atomic_file.h"
#include "core/error.h"

namespace dsq::quant {

namespace fs = std::filesystem;

const std::vector<std::string>& copied_model_files() {
  static const std::vector<std::string> files = {"tokenizer.json",         "tokenizer_config.json",
                                                 "special_tokens_map.json", "tokenizer.model",
                                                 "chat_template.jinja",     "generation_config.json"};
  return files;
}

void copy_file_atomically(const std::string& from, const std::string& to) {
  write_file_atomically(to, read_file(from));
}

OutputCheckpoint::OutputCheckpoint(std::string dir, int num_shards) : dir_(std::move(dir)), num_shards_(num_shards) {
  DSQ_CHECK(num_shards_ > 0 && num_shards_ < 100000, dir_, ": bad shard count ", num_shards_);
}

std::string OutputCheckpoint::shard_name(int shard) const {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard + 1, num_shards_);
  return name;
}

bool OutputCheckpoint::has_shard(int shard) const { return fs::exists(fs::path(dir_) / shard_name(shard)); }

void OutputCheckpoint::write_shard(int shard, std::vector<NamedTensor> tensors) const {
  std::sort(tensors.begin(), tensors.end(), [](const NamedTensor& a, const NamedTensor& b) { return a.name < b.name; });
  write_safetensors((fs::path(dir_) / shard_name(shard)).string(), tensors, {{"format", "pt"}});
}

void OutputCheckpoint::finish(const nlohmann::json& config, const std::string& source_dir) const {
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  for (int s = 0; s < num_shards_; ++s) {
    const auto file = SafetensorsFile::open((fs::path(dir_) / shard_name(s)).string());
    for (const TensorInfo& t : file->tensors()) {
      weight_map[t.name] = shard_name(s);
      total += t.end - t.begin;
    }
  }
  write_safetensors_index((fs::path(dir_) / "model.safetensors.index.json").string(), weight_map, total);
  write_file_atomically((fs::path(dir_) / "config.json").string(), config.dump(2) + "\n");
  for (const std::string& name : copied_model_files()) {
    const fs::path from = fs::path(source_dir) / name;
    if (fs::exists(from)) copy_file_atomically(from.string(), (fs::path(dir_) / name).string());
  }
}

}  // namespace dsq::quant
