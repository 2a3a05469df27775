// Loading of the shared tokenizer-test inputs; see fixture_tokenizers.h.
#include "fixture_tokenizers.h"
#include "core/read_file.h"


#include "support/paths.h"

namespace dsq::test {

const tokenizer::Tokenizer& deepseek_v3_tokenizer() {
  static const auto tok =
      tokenizer::Tokenizer::load(shared_path("tokenizers/deepseek-v3/tokenizer.json"));
  return tok;
}

const tokenizer::Tokenizer& tiny_brown_tokenizer() {
  static const auto tok = tokenizer::Tokenizer::load(project_path("models/tiny-brown"));
  return tok;
}

const nlohmann::json& deepseek_v3_fixture() {
  static const auto fixture =
      nlohmann::json::parse(read_file(shared_path("fixtures/tokenizer-deepseek-v3.json")));
  return fixture;
}


bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < s.size()) {
    const unsigned c = byte(i);
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) n = 1;
    else if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const unsigned b = byte(i + k);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return false;
    }
    i += n;
  }
  return true;
}

}  // namespace dsq::test
