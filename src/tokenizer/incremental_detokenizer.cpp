// UTF-8 completion for streamed tokens; see incremental_detokenizer.h.
#include "tokenizer/incremental_detokenizer.h"

namespace dsq::tokenizer {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Valid range of the second byte of a sequence led by `lead` (Unicode Table 3-7); later
// continuation bytes are always 0x80..0xBF.
struct SecondByteRange {
  unsigned char low, high;
};

// Number of bytes of the character led by `lead`; 0 when `lead` cannot start one.
int sequence_length(unsigned char lead, SecondByteRange& second) {
  second = {0x80, 0xBF};
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (lead == 0xE0) second = {0xA0, 0xBF};  // no overlongs
    if (lead == 0xED) second = {0x80, 0x9F};  // no surrogates
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (lead == 0xF0) second = {0x90, 0xBF};  // no overlongs
    if (lead == 0xF4) second = {0x80, 0x8F};  // nothing above U+10FFFF
    return 4;
  }
  return 0;
}

// Moves the complete part of `pending` to `out` (ill-formed subparts as U+FFFD) and leaves
// only an incomplete, still valid character prefix in `pending`.
void take_complete(std::string& pending, std::string& out) {
  size_t i = 0;
  while (i < pending.size()) {
    SecondByteRange second{};
    const int length = sequence_length(static_cast<unsigned char>(pending[i]), second);
    if (length == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    int valid = 1;  // bytes of this sequence that are well-formed so far
    while (valid < length && i + valid < pending.size()) {
      const auto b = static_cast<unsigned char>(pending[i + valid]);
      const unsigned char low = valid == 1 ? second.low : 0x80;
      const unsigned char high = valid == 1 ? second.high : 0xBF;
      if (b < low || b > high) break;
      ++valid;
    }
    if (valid == length) {
      out.append(pending, i, length);
      i += length;
    } else if (i + valid == pending.size()) {
      break;  // incomplete so far: wait for more bytes
    } else {
      out += kReplacement;  // ill-formed: replace the maximal subpart, resume at the bad byte
      i += valid;
    }
  }
  pending.erase(0, i);
}

}  // namespace

std::string IncrementalDetokenizer::push(int32_t id) {
  const std::string& bytes = tokenizer_->token_bytes(id);
  std::string out;
  if (skip_special_ && tokenizer_->is_special(id)) return out;
  pending_ += bytes;
  take_complete(pending_, out);
  return out;
}

std::string IncrementalDetokenizer::finish() {
  std::string out;
  take_complete(pending_, out);
  if (!pending_.empty()) out += kReplacement;
  pending_.clear();
  return out;
}

}  // namespace dsq::tokenizer
