// Shared inputs of the tokenizer tests: the tokenizers under test (loaded once per test
// binary, since the DeepSeek-V3 tokenizer.json takes a moment to parse), the HF-encoded
// fixture file, and a helper to check UTF-8 independently of the code
// under test.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/read_file.h"  // read_file, used by every tokenizer test
#include "tokenizer/tokenizer.h"

namespace dsq::test {

const tokenizer::Tokenizer& deepseek_v3_tokenizer();  // shared/tokenizers/deepseek-v3
const tokenizer::Tokenizer& tiny_brown_tokenizer();   // models/tiny-brown (project dir)
// shared/fixtures/tokenizer-deepseek-v3.json: cases[{text, ids, decoded}], corpus{file, ids}.
const nlohmann::json& deepseek_v3_fixture();

// Straightforward well-formedness check (Unicode Table 3-7), written separately from the
// detokenizer's so that the two cannot share a mistake.
bool is_valid_utf8(const std::string& s);

}  // namespace dsq::test
