// Runs the built dsq binary from a test and captures its stdout.
#pragma once

#include <cstdio>
#include <string>

#include "core/error.h"
#include "support/paths.h"

namespace dsq::test {

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
};

// `args` is appended to the binary path as shell words (callers quote where needed);
// stderr goes to the test log.
inline CommandResult run_dsq(const std::string& args) {
  const std::string command = dsq_binary() + " " + args;
  FILE* p = popen(command.c_str(), "r");
  DSQ_CHECK(p != nullptr, "cannot run ", command);
  CommandResult r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace dsq::test
