// A benchmark's result table: every line printed to stdout as it is produced (progress on
// long runs) and kept, to be written to --out at the end (core/atomic_file.h).
#pragma once

#include <cstdarg>
#include <cstdio>
#include <string>
#include <vector>

namespace dsq::bench {

class MarkdownOutput {
 public:
  void emit(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    std::vector<char> buf(size_t(std::vsnprintf(nullptr, 0, fmt, ap)) + 1);
    va_end(ap);
    std::vsnprintf(buf.data(), buf.size(), fmt, again);
    va_end(again);
    std::fputs(buf.data(), stdout);
    std::fflush(stdout);
    text_ += buf.data();
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

}  // namespace dsq::bench
