// AtomicFile: temporary file + fsync + rename (see atomic_file.h).
#include "core/atomic_file.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <unistd.h>

#include "core/error.h"

namespace dsq {

namespace {

std::string errno_text() { return std::strerror(errno); }

// The directory holding `path`, for the fsync that makes a rename durable.
std::string parent_directory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  // pid + a per-process counter: concurrent writers (threads or processes) never share a
  // temporary.
  static std::atomic<uint64_t> counter{0};
  temp_path_ = path_ + ".tmp-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw error(path_, ": cannot create temporary file ", temp_path_, ": ", errno_text());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  DSQ_CHECK(fd_ >= 0, path_, ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Large tensors are written in pieces: a single write() may be capped (2 GiB on Linux).
    const ssize_t n = ::write(fd_, p, size < (size_t(1) << 30) ? size : (size_t(1) << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw error(path_, ": write failed: ", errno_text());
    p += n;
    size -= size_t(n);
    written_ += uint64_t(n);
  }
}

void AtomicFile::commit() {
  DSQ_CHECK(fd_ >= 0, path_, ": committed twice");
  if (::fsync(fd_) != 0) throw error(path_, ": fsync failed: ", errno_text());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw error(path_, ": close failed: ", errno_text());
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    throw error(path_, ": cannot rename ", temp_path_, " into place: ", errno_text());
  committed_ = true;
  const int dir = ::open(parent_directory(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);  // best effort: some file systems refuse fsync on directories
    ::close(dir);
  }
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace dsq
