// dsq::Error: the one exception type dsq throws for user-facing failures.
//
// Every layer throws Error with a message that names the object (file, tensor,
// request) and the problem; the CLI and server catch it at the boundary and print
// exactly one line. Internal invariants use DSQ_CHECK, which also throws Error so
// that a bad input can never abort the process.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dsq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

// Builds a message from streamable parts: throw error("file ", path, ": truncated").
template <typename... Parts>
Error error(const Parts&... parts) {
  return Error(detail::concat(parts...));
}

}  // namespace dsq

#define DSQ_CHECK(cond, ...)                                   \
  do {                                                         \
    if (!(cond)) throw ::dsq::error(__VA_ARGS__);              \
  } while (0)
