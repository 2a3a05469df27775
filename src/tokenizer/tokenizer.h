// Tokenizer: text <-> token ids for byte-level BPE models loaded from HF tokenizer.json.
//
// encode: split the raw text on added tokens (HF semantics: leftmost, longest match; each
// maps straight to its id), pre-tokenize the rest with the file's Split regexes (PCRE2),
// and BPE-merge each piece by merge rank. No BOS/EOS is added: callers that want one use
// bos_id(). decode: concatenates each token's raw bytes (added tokens as their content).
// Invalid UTF-8 input is accepted and round-trips byte-exactly (see pre_tokenizer.h); decode
// therefore returns raw bytes, which are valid UTF-8 whenever the ids came from valid text.
// Use IncrementalDetokenizer to stream text that is always valid UTF-8. All methods are
// const and safe to call from several threads at once (the piece cache is locked).
//
// Supported tokenizer.json subset (anything else is a clear dsq::Error naming the file):
// model BPE (no dropout, no subword prefix/suffix, no byte fallback), normalizer none or an
// empty Sequence, pre-tokenizer Sequence[Split(Isolated)..., ByteLevel(no prefix space,
// use_regex false)], decoder ByteLevel, added tokens without lstrip/rstrip/single_word.
// Tested by tests/tokenizer/test_tokenizer.cpp against HF-encoded fixtures.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsq::tokenizer {

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a model directory containing one. bos/eos come from
  // tokenizer_config.json beside it when present, else from DeepSeek's sentence tokens.
  static Tokenizer load(const std::string& path);

  std::vector<int32_t> encode(std::string_view text) const;
  // encode() spread over the thread pool (core/thread_pool.h); same ids. See
  // parallel_encode.cpp for where the text is cut.
  std::vector<int32_t> encode_parallel(std::string_view text) const;
  // Throws dsq::Error for an id outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The id of an added token (by content) or of a vocab token (written in tokenizer.json's
  // byte-level alphabet, e.g. "Ġthe"); -1 if there is none.
  int32_t token_id(std::string_view token) const;
  // The raw bytes `id` decodes to. Throws dsq::Error for an unknown id.
  const std::string& token_bytes(int32_t id) const;
  // True for added tokens marked "special" (the ones decode can skip).
  bool is_special(int32_t id) const;
  int32_t bos_id() const { return bos_id_; }  // -1 when the tokenizer has none
  int32_t eos_id() const { return eos_id_; }  // -1 when the tokenizer has none
  // One past the largest id (model vocab and added tokens).
  size_t vocab_size() const { return tokens_.size(); }
  // The tokenizer.json this was loaded from, for messages.
  const std::string& source() const { return source_; }

 private:
  enum class TokenKind : uint8_t { kNone, kModel, kAdded, kSpecial };
  struct TokenEntry {
    std::string bytes;
    TokenKind kind = TokenKind::kNone;
  };

  Tokenizer(std::string source, BpeModel model, PreTokenizer pre_tokenizer)
      : source_(std::move(source)), model_(std::move(model)), pre_tokenizer_(std::move(pre_tokenizer)) {}
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;
  const TokenEntry& entry(int32_t id) const;

  std::string source_;
  BpeModel model_;
  PreTokenizer pre_tokenizer_;
  // HF matches added tokens in two passes: normalized=false ones on the raw text, then
  // normalized=true ones on the normalized remainder (dsq supports no normalizer, so the
  // remainder is the raw text too, but the pass order still decides overlaps).
  AddedTokenMatcher raw_added_;
  AddedTokenMatcher normalized_added_;
  std::unordered_map<std::string, int32_t> added_ids_;
  std::vector<TokenEntry> tokens_;  // by id
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;

  friend class TokenizerLoader;
};

}  // namespace dsq::tokenizer
