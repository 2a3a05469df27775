// safetensors: a zero-copy mmap reader (single files and sharded checkpoints) and an
// atomic writer.
//
// File layout: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
// data section. The reader validates everything before handing out a view: header length
// within the file, JSON well-formed, known dtype, offsets inside the data section,
// byte size = numel * dtype size, no two tensors overlapping. Each problem throws
// dsq::Error with the file path and tensor name in the message.
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
  // Validates a header held in memory (for fuzzing and tests): `file_size` is the
  // size the whole file would have. Returns the tensors in header order.
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

// All tensors of a checkpoint: a single .safetensors file, a directory with
// model.safetensors, or a directory with model.safetensors.index.json and its shards
// (any *.safetensors in a directory without an index are also accepted).
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

// Writes one safetensors file atomically: to "<path>.tmp-<pid>", fsync, rename. Tensors
// are written in the given order, each aligned to 8 bytes. Packed dtypes (I4, FP4) are
// rejected: callers store them in their on-disk container type (I32 / U8).
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes the sharded index file (model.safetensors.index.json) atomically.
void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size);

}  // namespace dsq
