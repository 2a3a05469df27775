// IncrementalDetokenizer: turns a stream of token ids into a stream of whole UTF-8 text.
//
// A byte-level token can end in the middle of a character (an emoji is often 2-4 tokens),
// so a streaming server cannot send each token's bytes as they come. push() appends a
// token's bytes to a pending buffer and returns the longest prefix made of complete
// characters; an incomplete but still possibly valid tail stays buffered. Bytes that can
// never become valid UTF-8 (a stray continuation byte, an overlong or surrogate lead,
// a sequence cut short by a new lead byte) are returned as U+FFFD, one per maximal ill-formed
// subpart, so every returned chunk is valid UTF-8. finish() ends the stream: a buffered
// incomplete tail becomes U+FFFD. For ids whose full decode is valid UTF-8, the
// concatenated chunks equal Tokenizer::decode of the same ids.
// Tested by tests/tokenizer/test_incremental_detokenizer.cpp.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace dsq::tokenizer {

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object. With `skip_special`, special tokens emit nothing.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(&tokenizer), skip_special_(skip_special) {}

  // Text completed by this token (possibly empty). Throws dsq::Error for an unknown id.
  std::string push(int32_t id);
  // Text still buffered at the end of the stream (U+FFFD for an incomplete tail).
  std::string finish();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes not yet returned: at most 3, a prefix of one character
};

}  // namespace dsq::tokenizer
