// AddedTokenMatcher: finds added (special) tokens in raw text, HF semantics.
//
// HF splits the input on its added tokens before pre-tokenization: scanning left to right,
// at the first position where any added token starts it takes the longest one, emits its
// id, and continues after it; the text between matches goes through the normal pipeline.
// A byte trie makes each position cost one table lookup unless a token could start there.
// HF runs two such passes (tokens with normalized=false on the raw text, then the
// normalized=true ones on what is left); Tokenizer composes two matchers the same way.
// Tested by tests/tokenizer (fixture case with <｜User｜> etc., longest-match test).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/function_ref.h"

namespace dsq::tokenizer {

class AddedTokenMatcher {
 public:
  void add(std::string_view content, int32_t id);
  bool empty() const { return nodes_.size() == 1; }

  // Walks `text` in order, calling on_text(piece) for non-empty stretches without added
  // tokens and on_token(id) for each added token found.
  void split(std::string_view text, FunctionRef<void(std::string_view)> on_text,
             FunctionRef<void(int32_t)> on_token) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, uint32_t>> children;  // sorted by byte
    int32_t token_id = -1;                                      // -1: no token ends here
  };
  uint32_t child(uint32_t node, unsigned char byte) const;
  // The longest token starting at text[pos], as (length, id); length 0 when none.
  std::pair<size_t, int32_t> longest_match(std::string_view text, size_t pos) const;

  std::vector<Node> nodes_{Node{}};
  bool can_start_[256] = {};  // bytes some token starts with
  std::string start_bytes_;    // the same bytes as a list
};

}  // namespace dsq::tokenizer
