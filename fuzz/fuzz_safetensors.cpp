// libFuzzer target: SafetensorsFile::parse_header on arbitrary bytes, as a whole file.
//
// A rejection (dsq::Error) is the expected outcome for most inputs. Findings are crashes,
// sanitizer reports, leaks, any other exception, and an accepted header whose tensors do not
// lie inside the input: every accepted tensor's first and last byte is read, so ASan reports
// a range the validation let through wrongly.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, std::string> metadata;
  std::vector<dsq::TensorInfo> tensors;
  try {
    tensors = dsq::SafetensorsFile::parse_header("fuzz.safetensors", data, size, &metadata);
  } catch (const dsq::Error&) {
    return 0;
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  const uint8_t* section = data + 8 + header_len;
  volatile uint8_t sink = 0;
  for (const dsq::TensorInfo& t : tensors) {
    if (t.end == t.begin) continue;
    sink = sink ^ section[t.begin] ^ section[t.end - 1];
  }
  return 0;
}
