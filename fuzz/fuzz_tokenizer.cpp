// fuzz_tokenizer: libFuzzer target for the byte-level BPE tokenizer (tiny-brown's).
//
// Any byte string must encode without crashing to ids inside the vocabulary, and decode
// back to exactly the same bytes: dsq accepts invalid UTF-8 (PCRE2_MATCH_INVALID_UTF leaves
// ill-formed bytes to the byte-level BPE, see tokenizer/pre_tokenizer.h), so the round trip
// is checked for every input, not only for valid UTF-8. For valid UTF-8 input the streaming
// IncrementalDetokenizer must reproduce the input and cut it only at character boundaries.
// Built and run through fuzz/CMakeLists.txt (`ctest -L fuzz` in a clang build directory).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace {

// Well-formed UTF-8, checked by decoding each code point and rejecting overlong forms,
// surrogates and values above U+10FFFF.
bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    const size_t length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
    if (length == 0 || i + length > s.size()) return false;
    uint32_t cp = length == 1 ? lead : lead & (0x7F >> length);
    for (size_t k = 1; k < length; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    const uint32_t min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[length] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

void fail(const char* what) {
  std::fprintf(stderr, "fuzz_tokenizer: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = dsq::tokenizer::Tokenizer::load(DSQ_FUZZ_TOKENIZER);
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const std::vector<int32_t> ids = tok.encode(text);
  for (const int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= tok.vocab_size()) fail("id outside the vocabulary");
  }
  if (tok.decode(ids) != text) fail("decode(encode(x)) != x");

  if (is_valid_utf8(text)) {
    dsq::tokenizer::IncrementalDetokenizer detok(tok);
    std::string streamed;
    for (const int32_t id : ids) {
      streamed += detok.push(id);
      // A chunk ends mid-character exactly when the next input byte is a continuation byte.
      if (streamed.size() < text.size() && (static_cast<unsigned char>(text[streamed.size()]) & 0xC0) == 0x80) {
        fail("detokenizer emitted part of a character");
      }
    }
    streamed += detok.finish();
    if (streamed != text) fail("streamed detokenization != input");
  }
  return 0;
}
