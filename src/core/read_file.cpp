#include "core/read_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsq {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(path, ": cannot open (", std::strerror(errno), ")");
  std::ostringstream data;
  data << in.rdbuf();
  DSQ_CHECK(!in.bad(), path, ": read error");
  return data.str();
}

}  // namespace dsq
