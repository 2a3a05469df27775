// Byte-level alphabet tables; see byte_level.h.
#include "tokenizer/byte_level.h"

#include <array>
#include <cstdint>

namespace dsq::tokenizer {
namespace {

// Bytes that are printed as themselves: '!'..'~', '¡'..'¬', '®'..'ÿ'.
bool is_self_printing(unsigned b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

std::string utf8_of(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {  // the alphabet stays below U+0800, so two bytes suffice
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

struct Tables {
  std::array<std::string, 256> char_of_byte;
  std::array<int16_t, 0x200> byte_of_codepoint;  // -1: not in the alphabet

  Tables() {
    byte_of_codepoint.fill(-1);
    uint32_t next_shifted = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
      const uint32_t cp = is_self_printing(b) ? b : next_shifted++;
      char_of_byte[b] = utf8_of(cp);
      byte_of_codepoint[cp] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

const std::string& byte_level_char(unsigned char byte) { return tables().char_of_byte[byte]; }

std::optional<std::string> byte_level_decode(std::string_view text) {
  const Tables& t = tables();
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto c0 = static_cast<unsigned char>(text[i]);
    uint32_t cp;
    if (c0 < 0x80) {
      cp = c0;
      i += 1;
    } else if ((c0 & 0xE0) == 0xC0 && i + 1 < text.size() &&
               (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80) {
      cp = ((c0 & 0x1Fu) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return std::nullopt;  // three- and four-byte characters are never in the alphabet
    }
    if (cp >= t.byte_of_codepoint.size() || t.byte_of_codepoint[cp] < 0) return std::nullopt;
    out += static_cast<char>(t.byte_of_codepoint[cp]);
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += byte_level_char(static_cast<unsigned char>(c));
  return out;
}

}  // namespace dsq::tokenizer
