// bench_tokenizer: single-threaded encode throughput of dsq's tokenizer, in MB/s.
//
// Usage: bench_tokenizer [tokenizer.json or model dir] [text files...]
// (defaults: shared DeepSeek-V3 tokenizer, Brown valid.txt and train.txt). For each file it
// encodes (a) the whole file as one string and (b) line by line, each three times with a
// freshly loaded tokenizer: "cold" is the first pass (empty piece cache), "warm" the best of
// the two others. Throughput is MB per CPU-second of the (single-threaded) process.
// bench/tokenizer/compare_hf.sh runs HF `tokenizers` the same way.
// Not a test; results go to bench/results/tokenizer.md.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "core/read_file.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {


std::vector<std::string_view> split_lines(const std::string& text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    end = end == std::string::npos ? text.size() : end + 1;  // keep the newline
    lines.emplace_back(text.data() + start, end - start);
    start = end;
  }
  return lines;
}

// Process CPU seconds: on the shared dev box other jobs stretch wall time unpredictably,
// while the CPU time of a single-threaded run is what the encode itself costs.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// CPU seconds per pass for `passes` passes of `encode_all`, which returns the token count.
template <typename F>
std::vector<double> time_passes(int passes, size_t& tokens, F&& encode_all) {
  std::vector<double> seconds;
  for (int p = 0; p < passes; ++p) {
    const double start = cpu_seconds();
    tokens = encode_all();
    seconds.push_back(cpu_seconds() - start);
  }
  return seconds;
}

void report(const char* mode, const std::string& file, size_t bytes, size_t tokens,
            const std::vector<double>& seconds) {
  const double mb = static_cast<double>(bytes) / 1e6;
  const double warm = *std::min_element(seconds.begin() + 1, seconds.end());
  std::printf("dsq  %-10s %-40s %9zu tokens  cold %7.2f MB/s  warm %7.2f MB/s\n", mode,
              file.c_str(), tokens, mb / seconds[0], mb / warm);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string shared = DSQ_SHARED_DIR;
    const std::string tokenizer_path =
        argc > 1 ? argv[1] : shared + "/tokenizers/deepseek-v3/tokenizer.json";
    std::vector<std::string> files(argv + std::min(argc, 2), argv + argc);
    if (files.empty()) files = {shared + "/data/brown/valid.txt", shared + "/data/brown/train.txt"};
    for (const std::string& file : files) {
      const std::string text = dsq::read_file(file);
      size_t tokens = 0;
      {
        const auto tok = dsq::tokenizer::Tokenizer::load(tokenizer_path);
        const auto seconds = time_passes(3, tokens, [&] { return tok.encode(text).size(); });
        report("whole-file", file, text.size(), tokens, seconds);
      }
      {
        const auto tok = dsq::tokenizer::Tokenizer::load(tokenizer_path);
        const auto lines = split_lines(text);
        const auto seconds = time_passes(3, tokens, [&] {
          size_t n = 0;
          for (const auto line : lines) n += tok.encode(line).size();
          return n;
        });
        report("per-line", file, text.size(), tokens, seconds);
      }
    }
  } catch (const dsq::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
