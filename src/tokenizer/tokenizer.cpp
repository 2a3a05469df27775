// Tokenizer encode/decode; loading lives in tokenizer_load.cpp. See tokenizer.h.
#include "tokenizer/tokenizer.h"

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace dsq::tokenizer {

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);  // ~4 bytes per token on English text
  const auto push_id = [&](int32_t id) { ids.push_back(id); };
  raw_added_.split(
      text,
      [&](std::string_view unmatched) {
        normalized_added_.split(
            unmatched, [&](std::string_view plain) { encode_ordinary(plain, ids); }, push_id);
      },
      push_id);
  return ids;
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  pre_tokenizer_.split(text, [&](std::string_view piece) { model_.encode_piece(piece, out); });
}

const Tokenizer::TokenEntry& Tokenizer::entry(int32_t id) const {
  DSQ_CHECK(id >= 0 && static_cast<size_t>(id) < tokens_.size() &&
                tokens_[id].kind != TokenKind::kNone,
            "token id ", id, " is not in the vocabulary of ", source_, " (vocab size ",
            tokens_.size(), ")");
  return tokens_[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string text;
  for (const int32_t id : ids) {
    const TokenEntry& e = entry(id);
    if (skip_special && e.kind == TokenKind::kSpecial) continue;
    text += e.bytes;
  }
  return text;
}

const std::string& Tokenizer::token_bytes(int32_t id) const { return entry(id).bytes; }

bool Tokenizer::is_special(int32_t id) const { return entry(id).kind == TokenKind::kSpecial; }

int32_t Tokenizer::token_id(std::string_view token) const {
  if (const auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
  const auto bytes = byte_level_decode(token);
  return bytes ? model_.token_id(*bytes) : -1;
}

}  // namespace dsq::tokenizer
