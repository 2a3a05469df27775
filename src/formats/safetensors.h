// safetensors: a zero-copy mmap reader (single files and sharded checkpoints) and an
// atomic writer.
//
// File layout: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
// data section. The reader validates everything before handing out a view: header length
// within the file, JSON well-formed (no duplicate names), entries with exactly dtype/shape/
// data_offsets, known dtype, non-negative integer shape, begin <= end inside the data
// section, byte size = numel * dtype size, no two tensors overlapping, no unowned bytes
// (the reference implementation, which vLLM and transformers load with, rejects holes and
// trailing bytes), and `__metadata__` mapping strings to strings. Each problem throws one
// dsq::Error line "<path>: <problem> (tensor <name>)".
//
// Alignment (a dsq decision): a tensor's offset inside the data section must be a multiple of
// its element size, so views can be read as typed arrays. Every file the reference writer
// produces satisfies this (it lays tensors out by decreasing element size); a hand-made file
// that does not is rejected. A file whose header length leaves the data section itself
// unaligned (old writers did not pad the header) is accepted: get() then copies the tensor
// into an aligned buffer instead of returning a view.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsq {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws dsq::Error("<path>: <problem>") on any defect.
  static std::shared_ptr<const SafetensorsFile> open(const std::string& path);
  // Validates the header of a safetensors file held in memory (for fuzzing and tests):
  // `data`/`size` are the whole file's bytes; offsets are checked against them. `path` only
  // names the file in messages. Returns the tensors in header order.
  static std::vector<TensorInfo> parse_header(const std::string& path, const void* data, size_t size,
                                              std::map<std::string, std::string>* metadata);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // header order
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // A read-only view into the mapping; it keeps the file mapped while alive.
  Tensor get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_start_ = 0;
  std::weak_ptr<const SafetensorsFile> self_;
};

// All tensors of a checkpoint: a single .safetensors file; a directory with
// model.safetensors.index.json and its shards (the index must list every tensor of every
// shard, in the shard that holds it); a directory with model.safetensors (other files beside
// it, such as the fixtures' reference.safetensors, are not part of the model); or else every
// *.safetensors file of the directory. A tensor name may occur only once.
class TensorStore {
 public:
  static TensorStore open(const std::string& path);

  const std::string& directory() const { return directory_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // The file that holds `name` (for error messages).
  const std::string& file_of(const std::string& name) const;
  Tensor get(const std::string& name) const;

 private:
  std::string directory_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// Writes one safetensors file atomically (core/atomic_file.h: temporary, fsync, rename).
// The header lists the tensors in the given order and is padded with spaces so the data
// section starts 8-byte aligned. The data section has no holes (the reference reader rejects
// them), so to keep every tensor aligned to its element size the bytes are laid out by
// decreasing element size, keeping the given order among tensors of equal element size.
// Duplicate names and packed dtypes (I4, FP4) are rejected: callers store packed values in
// their on-disk container type (I32 / U8).
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes the sharded index file (model.safetensors.index.json) atomically.
void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size);

}  // namespace dsq
