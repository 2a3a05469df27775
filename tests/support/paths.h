// Where tests find their inputs: ../shared beside the project (reference models, tokenizer
// fixtures, data) and the build directory (the dsq binary for CLI tests).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/error.h"

namespace dsq::test {

// A path under ../shared (or under $DSQ_SHARED_DIR when set: the GPU machine gets a copy
// of the fixtures it needs, elsewhere); throws (failing the test loudly) when it does not
// exist, so a missing fixture can never make a test pass or skip silently.
inline std::string shared_path(const std::string& relative) {
  const char* override_dir = std::getenv("DSQ_SHARED_DIR");
  const std::filesystem::path p = std::filesystem::path(override_dir ? override_dir : DSQ_SHARED_DIR) / relative;
  DSQ_CHECK(std::filesystem::exists(p), "test fixture missing: ", p.string(),
            " (the tests need ../shared beside the project)");
  return p.string();
}

// A path in the project (or under $DSQ_PROJECT_DIR when set, as on the GPU machine).
inline std::string project_path(const std::string& relative) {
  const char* override_dir = std::getenv("DSQ_PROJECT_DIR");
  return (std::filesystem::path(override_dir ? override_dir : DSQ_PROJECT_DIR) / relative).string();
}

// The dsq binary of this build (or the one in $DSQ_BINARY_DIR when set, as on the GPU
// machine, where binaries are carried).
inline std::string dsq_binary() {
  const char* override_dir = std::getenv("DSQ_BINARY_DIR");
  return (std::filesystem::path(override_dir ? override_dir : DSQ_BINARY_DIR) / "dsq").string();
}

// A fresh empty directory under the system temp dir, unique per call.
std::string make_temp_dir(const std::string& tag);

}  // namespace dsq::test
