// encode_paragraphs: a plain-text corpus as one token stream, the way tiny-brown was trained
// and scored (shared/docs/dsv4-architecture.md §7.3): a paragraph is a block of lines ended by
// a blank (empty or whitespace-only) line, stripped of surrounding whitespace; each becomes
// BOS + tokens + EOS, and the paragraphs are concatenated. Perplexity (`dsq ppl`) and
// quantizer calibration both read text this way.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dsq::tokenizer {

// BOS / EOS are added where the tokenizer has them (ids >= 0).
std::vector<int64_t> encode_paragraphs(const Tokenizer& tok, std::string_view text);

}  // namespace dsq::tokenizer
