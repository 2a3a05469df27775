// The byte-level alphabet of GPT-2-style BPE tokenizers (HF `ByteLevel`).
//
// Every byte 0..255 is shown as one printable Unicode character so that vocab and merge
// strings in tokenizer.json are readable text: printable Latin-1 bytes stand for
// themselves, the other 68 bytes (controls, space, DEL, NBSP, soft hyphen) are shifted to
// U+0100 upwards in byte order (so the space byte is "Ġ", U+0120). Vocab entries are
// written in this alphabet; dsq converts them back to raw bytes at load time and works on
// raw bytes from then on. Tested through tests/tokenizer (vocab round trips).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace dsq::tokenizer {

// The UTF-8 encoding of the character that stands for `byte`.
const std::string& byte_level_char(unsigned char byte);

// Converts a vocab string written in the byte-level alphabet back to raw bytes; nullopt
// when it contains a character outside the alphabet (or is not valid UTF-8).
std::optional<std::string> byte_level_decode(std::string_view text);

// Converts raw bytes to the byte-level alphabet (the inverse of byte_level_decode).
std::string byte_level_encode(std::string_view bytes);

}  // namespace dsq::tokenizer
