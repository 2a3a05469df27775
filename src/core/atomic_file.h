// AtomicFile: writes a file so that readers only ever see the old contents or the complete
// new contents, never a half-written file.
//
// The bytes go to a temporary file in the destination's directory ("<path>.tmp-<pid>-<n>",
// same file system, so the final rename is atomic). commit() flushes them to disk (fsync),
// renames the temporary over the destination and fsyncs the directory so the rename itself
// survives a crash. An AtomicFile destroyed without commit() (an exception while writing)
// removes its temporary, so nothing half-written is left behind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsq {

class AtomicFile {
 public:
  // Creates the temporary file; throws dsq::Error("<path>: cannot create ...") on failure.
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes; throws dsq::Error naming the destination on a write error (disk full).
  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  uint64_t bytes_written() const { return written_; }

  // Makes the new contents visible under the destination path. Call once, last.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// Replaces the file at `path` with `bytes` atomically (see AtomicFile).
void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace dsq
