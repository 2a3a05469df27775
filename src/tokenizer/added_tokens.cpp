// Byte trie for added tokens; see added_tokens.h.
#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

namespace dsq::tokenizer {

uint32_t AddedTokenMatcher::child(uint32_t node, unsigned char byte) const {
  const auto& children = nodes_[node].children;
  const auto it = std::lower_bound(children.begin(), children.end(), byte,
                                   [](const auto& edge, unsigned char b) { return edge.first < b; });
  return (it != children.end() && it->first == byte) ? it->second : 0;  // 0: the root, "none"
}

void AddedTokenMatcher::add(std::string_view content, int32_t id) {
  if (content.empty()) return;  // an empty token can never be matched
  if (!can_start_[static_cast<unsigned char>(content[0])]) start_bytes_ += content[0];
  can_start_[static_cast<unsigned char>(content[0])] = true;
  uint32_t node = 0;
  for (const char c : content) {
    const auto byte = static_cast<unsigned char>(c);
    uint32_t next = child(node, byte);
    if (next == 0) {
      next = static_cast<uint32_t>(nodes_.size());
      nodes_.emplace_back();
      auto& children = nodes_[node].children;
      children.insert(std::lower_bound(children.begin(), children.end(),
                                       std::make_pair(byte, uint32_t{0})),
                      {byte, next});
    }
    node = next;
  }
  nodes_[node].token_id = id;
}

std::pair<size_t, int32_t> AddedTokenMatcher::longest_match(std::string_view text,
                                                            size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  uint32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<unsigned char>(text[i]));
    if (node == 0) break;
    if (nodes_[node].token_id >= 0) best = {i + 1 - pos, nodes_[node].token_id};
  }
  return best;
}

void AddedTokenMatcher::split(std::string_view text, FunctionRef<void(std::string_view)> on_text,
                              FunctionRef<void(int32_t)> on_token) const {
  size_t text_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (start_bytes_.size() == 1) {  // typical ("<"): let memchr skip ahead
      const void* hit = std::memchr(text.data() + pos, start_bytes_[0], text.size() - pos);
      if (hit == nullptr) break;
      pos = static_cast<const char*>(hit) - text.data();
    } else if (!can_start_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const auto [length, id] = longest_match(text, pos);
    if (length == 0) {
      ++pos;
      continue;
    }
    if (pos > text_start) on_text(text.substr(text_start, pos - text_start));
    on_token(id);
    pos += length;
    text_start = pos;
  }
  if (text_start < text.size()) on_text(text.substr(text_start));
}

}  // namespace dsq::tokenizer
