// read_file: a whole file into memory, with the one error style dsq uses for files.
#pragma once

#include <string>

namespace dsq {

// The file's bytes. Throws dsq::Error "<path>: cannot open (<reason>)" or "<path>: read error".
std::string read_file(const std::string& path);

}  // namespace dsq
