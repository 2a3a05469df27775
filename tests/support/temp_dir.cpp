#include <atomic>
#include <chrono>

#include <unistd.h>

#include "support/paths.h"

namespace dsq::test {

std::string make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
  const std::filesystem::path p = std::filesystem::temp_directory_path() /
      ("dsq-test-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(stamp) + "-" +
       std::to_string(counter++));
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace dsq::test
