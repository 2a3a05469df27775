// Calibration samples: token sequences the quantizer runs through the model.
//
//  - A text file (e.g. shared/data/brown/train.txt): paragraphs are blank-line-separated
//    blocks, stripped; each is encoded as BOS + tokens + EOS (the way tiny-brown was trained
//    and is scored); the paragraphs are concatenated into one stream, which is cut into
//    consecutive windows of seq_len tokens; the first num_samples windows are used.
//  - A .jsonl file of chat conversations, one {"messages": [{"role", "content"}, ...]} per
//    line: each conversation is one sample, encoded by hand as llm-compressor's DeepSeek-V4
//    example does (no chat template): BOS, then "<｜User｜>" + content for user turns
//    (system turns are plain text) and "<｜Assistant｜></think>" + content + EOS for assistant
//    turns; truncated to seq_len tokens. The first num_samples non-empty ones are used.
// Fewer samples than asked for is an error that says how many the file holds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dsq::quant {

std::vector<std::vector<int64_t>> load_calibration_samples(const std::string& path,
                                                           const tokenizer::Tokenizer& tok,
                                                           int64_t num_samples, int64_t seq_len);

}  // namespace dsq::quant
