// The pre-tokenizer: a sequence of HF `Split` regexes (behavior "Isolated") run with PCRE2.
//
// Each stage splits every piece the previous stage produced: regex matches become pieces of
// their own and so do the gaps between them. Each piece is matched as its own subject, so a
// lookahead such as `\s+(?!\S)` sees the end of the piece, not the text after it (HF does
// the same). The patterns come from tokenizer.json; they are compiled with PCRE2 in UTF +
// UCP mode (Unicode \s, \p{..}) and JIT-compiled. HF uses Oniguruma: \s/\S are rewritten
// to Oniguruma's meaning (see onig_to_pcre2). Remaining difference: PCRE2's Unicode tables
// may be older than HF's, so characters encoded in newer Unicode versions (unassigned for
// PCRE2) can split differently; for all characters assigned in Unicode 14 dsq and HF
// tokenizers 0.23 agree (checked code point by code point when this was written).
//
// Invalid UTF-8: patterns are compiled with PCRE2_MATCH_INVALID_UTF, so an ill-formed byte
// sequence never matches and simply lands in a gap piece; the byte-level BPE after this
// stage has a token for every byte, so encoding is total and decode(encode(x)) == x for any
// bytes. (HF cannot take invalid UTF-8 at all; on valid text the two agree.)
// Tested by tests/tokenizer (fixture ids) and fuzz/fuzz_tokenizer.cpp.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/function_ref.h"

namespace dsq::tokenizer {

class PreTokenizer {
 public:
  // One Split stage: `pattern` is a PCRE2 regex, or a literal string when `is_literal`.
  struct Stage {
    std::string pattern;
    bool is_literal = false;
  };

  // Compiles the stages; throws dsq::Error naming `source` (the tokenizer file) and the
  // pattern when one does not compile.
  PreTokenizer(const std::vector<Stage>& stages, const std::string& source);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Calls `emit` for each non-empty piece of `text`, in order; the pieces concatenate to
  // `text`. Thread-safe (match buffers are per thread).
  void split(std::string_view text, FunctionRef<void(std::string_view)> emit) const;

 private:
  struct Compiled;
  void split_at_stage(size_t stage, std::string_view text,
                      FunctionRef<void(std::string_view)> emit) const;

  std::vector<std::unique_ptr<Compiled>> stages_;
  std::string source_;
};

}  // namespace dsq::tokenizer
