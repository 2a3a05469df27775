// A progress bar on stderr for long work (quantization layers, perplexity windows,
// eval items): "label  [#####.....]  37/128  12.3 it/s  ETA 0:07".
//
// On a terminal it redraws one line; otherwise (CI logs, pipes) it prints a plain line
// at most every few seconds and at the end, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dsq {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit = "it");
  ~ProgressBar();
  // Sets the count of finished items and redraws if enough time passed.
  void update(int64_t done, const std::string& note = "");
  // Prints the final state once.
  void finish(const std::string& note = "");

 private:
  void draw(bool final_line, const std::string& note);

  std::string label_, unit_;
  int64_t total_, done_ = 0;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "1:02:03" / "4:05" for a duration in seconds.
std::string format_duration(double seconds);

}  // namespace dsq
