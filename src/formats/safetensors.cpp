// safetensors reader (mmap + full header validation), sharded-checkpoint store and atomic
// writer; the format and the validation rules are described in safetensors.h.
#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"

namespace dsq {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// Names and JSON excerpts come from untrusted files: escape control characters so an error
// stays one line.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
  return out;
}

// JSON text for messages; replaces invalid UTF-8 rather than throwing.
std::string json_text(const json& v) {
  return printable(v.dump(-1, ' ', false, json::error_handler_t::replace));
}

// SAX handler that records the keys of the top-level object, in order, and the first
// duplicate among them. Values are skipped; syntax errors are left to the DOM parse.
struct TopLevelKeys : nlohmann::json_sax<json> {
  std::vector<std::string> order;
  std::set<std::string> seen;
  std::string duplicate;
  int depth = 0;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool key(string_t& k) override {
    if (depth != 1) return true;
    if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    order.push_back(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

uint64_t read_u64_le(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A JSON number that is a non-negative integer; `what` names it for the error.
uint64_t json_unsigned(const json& v, const std::string& path, const std::string& name, const char* what) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    throw error(path, ": ", what, " must be non-negative integers, found ", json_text(v),
                " (tensor ", printable(name), ")");
  return v.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry,
                       uint64_t data_size) {
  auto fail = [&](const auto&... parts) {
    return error(path, ": ", parts..., " (tensor ", printable(name), ")");
  };
  if (!entry.is_object()) throw fail("entry is not an object");
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw fail("unexpected key \"", printable(key), "\"");
  }
  if (!entry.contains("dtype") || !entry["dtype"].is_string()) throw fail("dtype missing or not a string");
  if (!entry.contains("shape") || !entry["shape"].is_array()) throw fail("shape missing or not an array");
  if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
    throw fail("data_offsets missing or not a pair [begin, end]");

  TensorInfo info;
  info.name = name;
  const std::string dtype = entry["dtype"].get<std::string>();
  if (!dtype_from_safetensors_name(dtype, &info.dtype)) throw fail("unknown dtype \"", printable(dtype), "\"");

  int64_t numel = 1;
  for (const json& d : entry["shape"]) {
    const uint64_t dim = json_unsigned(d, path, name, "shape dimensions");
    if (dim > uint64_t(INT64_MAX)) throw fail("shape dimension ", dim, " is too large");
    if (__builtin_mul_overflow(numel, int64_t(dim), &numel)) throw fail("shape ", json_text(entry["shape"]), " overflows");
    info.shape.push_back(int64_t(dim));
  }
  info.begin = json_unsigned(entry["data_offsets"][0], path, name, "data_offsets");
  info.end = json_unsigned(entry["data_offsets"][1], path, name, "data_offsets");
  if (info.begin > info.end) throw fail("data_offsets begin ", info.begin, " > end ", info.end);
  if (info.end > data_size)
    throw fail("data_offsets [", info.begin, ", ", info.end, "] run past the end of the file (data section has ",
               data_size, " bytes)");
  const uint64_t elem = uint64_t(dtype_bits(info.dtype) / 8);
  uint64_t expected = 0;
  if (__builtin_mul_overflow(uint64_t(numel), elem, &expected) || info.end - info.begin != expected)
    throw fail("byte size ", info.end - info.begin, " does not match shape ", shape_string(info.shape), " of ",
               dtype, " (", numel, " elements x ", elem, " bytes)");
  if (elem > 1 && info.end > info.begin && info.begin % elem != 0)  // empty tensors have nothing to misread
    throw fail("data offset ", info.begin, " is not a multiple of the ", elem, "-byte element size");
  return info;
}

}  // namespace

std::vector<TensorInfo> SafetensorsFile::parse_header(const std::string& path, const void* data, size_t size,
                                                      std::map<std::string, std::string>* metadata) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  if (size < 8) throw error(path, ": file too short for a safetensors header (", size, " bytes)");
  const uint64_t header_len = read_u64_le(bytes);
  if (header_len > size - 8)
    throw error(path, ": header length ", header_len, " runs past the end of the file (", size, " bytes)");
  if (header_len > kMaxHeaderBytes)
    throw error(path, ": header length ", header_len, " exceeds the 100 MB limit");
  const uint64_t data_size = size - 8 - header_len;

  // The parsed object is sorted by name: a first SAX pass records the header order and
  // duplicate names, which would silently shadow each other. (nlohmann's parser callback
  // would do the same in one pass but is quadratic in the number of keys.)
  TopLevelKeys keys;
  json::sax_parse(bytes + 8, bytes + 8 + header_len, &keys);
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const json::exception& e) {
    std::string what = e.what();
    const size_t bracket = what.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] "
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    throw error(path, ": malformed JSON header: ", printable(what));
  }
  if (!header.is_object()) throw error(path, ": header is not a JSON object");
  if (!keys.duplicate.empty())
    throw error(path, ": tensor listed twice in the header (tensor ", printable(keys.duplicate), ")");

  std::vector<TensorInfo> tensors;
  for (const std::string& name : keys.order) {
    const json& entry = header[name];
    if (name == "__metadata__") {
      if (!entry.is_object()) throw error(path, ": __metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          throw error(path, ": __metadata__ must map strings to strings, key \"", printable(key), "\" holds ",
                      json_text(value));
        if (metadata) (*metadata)[key] = value.get<std::string>();
      }
      continue;
    }
    tensors.push_back(parse_entry(path, name, entry, data_size));
  }

  // The tensors must tile the data section exactly: no overlap (reported first, as the more
  // specific defect), then no hole and nothing after the last tensor.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorInfo* furthest = nullptr;  // the tensor reaching furthest so far
  for (const TensorInfo* t : by_offset) {
    if (t->end == t->begin) continue;
    if (furthest && t->begin < furthest->end)
      throw error(path, ": data [", t->begin, ", ", t->end, ") overlaps tensor ", printable(furthest->name), " [",
                  furthest->begin, ", ", furthest->end, ") (tensor ", printable(t->name), ")");
    if (!furthest || t->end > furthest->end) furthest = t;
  }
  uint64_t covered = 0;
  for (const TensorInfo* t : by_offset) {
    if (t->begin > covered)
      throw error(path, ": data section bytes [", covered, ", ", t->begin,
                  ") belong to no tensor (hole before tensor ", printable(t->name), ")");
    covered = std::max(covered, t->end);
  }
  if (covered != data_size)
    throw error(path, ": data section has ", data_size - covered, " trailing bytes that belong to no tensor");
  return tensors;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw error(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw error(path, ": cannot stat: ", std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw error(path, ": not a regular file");
  }
  const size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw error(path, ": file too short for a safetensors header (", size, " bytes)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file open
  if (map == MAP_FAILED) throw error(path, ": cannot mmap: ", std::strerror(errno));
  file->map_ = static_cast<const std::byte*>(map);
  file->map_size_ = size;
  file->tensors_ = parse_header(path, map, size, &file->metadata_);  // on error ~SafetensorsFile unmaps
  file->data_start_ = 8 + size_t(read_u64_le(static_cast<const unsigned char*>(map)));
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  file->self_ = file;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw error(path_, ": no tensor ", name);
  return tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  const std::byte* data = map_ + data_start_ + t.begin;
  const size_t elem = size_t(dtype_bits(t.dtype) / 8);
  if (reinterpret_cast<uintptr_t>(data) % elem == 0) return Tensor::view(t.dtype, t.shape, data, self_.lock());
  // Unpadded header (see safetensors.h): an aligned copy instead of a misaligned view.
  Tensor copy = Tensor::zeros(t.dtype, t.shape);
  std::memcpy(copy.mutable_bytes(), data, t.end - t.begin);
  return copy;
}

// ---- TensorStore ----

namespace {

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(path, ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    std::string what = e.what();
    const size_t bracket = what.find("] ");
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    throw error(path, ": malformed JSON: ", printable(what));
  }
}

}  // namespace

TensorStore TensorStore::open(const std::string& path) {
  TensorStore store;
  std::vector<std::string> files;
  std::map<std::string, std::string> index_map;  // tensor -> shard path, when there is an index
  std::string index_path;
  if (fs::is_regular_file(path)) {
    const fs::path parent = fs::path(path).parent_path();
    store.directory_ = parent.empty() ? "." : parent.string();
    files.push_back(path);
  } else if (fs::is_directory(path)) {
    store.directory_ = path;
    const std::string index_file = (fs::path(path) / "model.safetensors.index.json").string();
    const std::string single = (fs::path(path) / "model.safetensors").string();
    if (fs::exists(index_file)) {
      index_path = index_file;
      const json index = read_json_file(index_path);
      if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        throw error(index_path, ": weight_map missing or not an object");
      std::set<std::string> shards;
      for (const auto& [name, shard] : index["weight_map"].items()) {
        if (!shard.is_string()) throw error(index_path, ": shard of tensor ", printable(name), " is not a string");
        const std::string file = shard.get<std::string>();
        if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
          throw error(index_path, ": shard \"", printable(file), "\" is not a file name in the directory (tensor ",
                      printable(name), ")");
        const std::string shard_path = (fs::path(path) / file).string();
        if (!fs::is_regular_file(shard_path))
          throw error(index_path, ": shard ", printable(file), " does not exist (tensor ", printable(name), ")");
        index_map[name] = shard_path;
        if (shards.insert(shard_path).second) files.push_back(shard_path);
      }
    } else if (fs::exists(single)) {
      files.push_back(single);
    } else {
      for (const auto& entry : fs::directory_iterator(path)) {
        if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
      }
      std::sort(files.begin(), files.end());
    }
    if (files.empty()) throw error(path, ": no safetensors files (and no model.safetensors.index.json)");
  } else {
    throw error(path, ": no such file or directory");
  }

  for (const std::string& file : files) {
    store.files_.push_back(SafetensorsFile::open(file));
    const SafetensorsFile& f = *store.files_.back();
    for (const TensorInfo& t : f.tensors()) {
      if (!index_path.empty() && !index_map.count(t.name))
        throw error(file, ": tensor ", printable(t.name), " is not listed in ", index_path);
      if (!index_path.empty() && index_map[t.name] != file)
        throw error(file, ": tensor ", printable(t.name), " is in this shard but ", index_path, " places it in ",
                    fs::path(index_map[t.name]).filename().string());
      const auto [it, fresh] = store.where_.emplace(t.name, store.files_.size() - 1);
      if (!fresh)
        throw error(file, ": tensor ", printable(t.name), " also appears in ", store.files_[it->second]->path());
    }
  }
  for (const auto& [name, shard] : index_map) {
    if (!store.where_.count(name))
      throw error(index_path, ": tensor ", printable(name), " is listed in shard ", fs::path(shard).filename().string(),
                  " but that shard does not contain it");
  }
  return store;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const TensorInfo& TensorStore::info(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw error(directory_, ": missing tensor ", name);
  return files_[it->second]->info(name);
}

const std::string& TensorStore::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw error(directory_, ": missing tensor ", name);
  return files_[it->second]->path();
}

Tensor TensorStore::get(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw error(directory_, ": missing tensor ", name);
  return files_[it->second]->get(name);
}

// ---- writer ----

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Data layout: decreasing element size keeps every offset aligned without holes.
  std::vector<size_t> layout(tensors.size());
  for (size_t i = 0; i < layout.size(); ++i) layout[i] = i;
  std::stable_sort(layout.begin(), layout.end(), [&](size_t a, size_t b) {
    return dtype_bits(tensors[a].tensor.dtype()) > dtype_bits(tensors[b].tensor.dtype());
  });
  std::vector<uint64_t> begin(tensors.size());
  uint64_t offset = 0;
  for (size_t i : layout) {
    begin[i] = offset;
    offset += tensors[i].tensor.nbytes();
  }

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const NamedTensor& nt = tensors[i];
    const Tensor& t = nt.tensor;
    DSQ_CHECK(!nt.name.empty() && nt.name != "__metadata__", path, ": invalid tensor name \"", nt.name, "\"");
    DSQ_CHECK(t.defined(), path, ": tensor ", nt.name, " is empty");
    DSQ_CHECK(t.device() == Device::CPU, path, ": tensor ", nt.name, " is not in CPU memory");
    const std::string_view dtype = dtype_safetensors_name(t.dtype());
    DSQ_CHECK(!dtype.empty(), path, ": tensor ", nt.name, ": dtype ", dtype_name(t.dtype()),
              " has no safetensors spelling (store packed values as I32/U8)");
    DSQ_CHECK(!header.contains(nt.name), path, ": tensor ", nt.name, " given twice");
    header[nt.name] = {{"dtype", dtype}, {"shape", t.shape()}, {"data_offsets", {begin[i], begin[i] + t.nbytes()}}};
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // the spec allows trailing spaces

  AtomicFile file(path);
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * i));
  file.write(length, 8);
  file.write(text);
  for (size_t i : layout) file.write(tensors[i].tensor.bytes(), tensors[i].tensor.nbytes());
  file.commit();
}

void write_safetensors_index(const std::string& path, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size) {
  const json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  write_file_atomically(path, index.dump(2) + "\n");
}

}  // namespace dsq
