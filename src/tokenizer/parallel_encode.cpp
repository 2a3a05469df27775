// Tokenizer::encode_parallel: encode long text on several threads with the same result.
//
// The text is cut into chunks that are encoded independently and concatenated, so a cut
// must fall where encode() itself ends a piece. dsq cuts only right after a "\n" that is
// followed by a non-whitespace byte: the byte-level pre-tokenizers in use (DeepSeek's, and
// GPT-2/Llama-3 style ones) never let a piece run from a newline into following
// non-space text (letter runs take no "\r\n" prefix, whitespace runs end before \S), and
// digit/CJK runs contain no newline. Added tokens could span such a point only if one
// contained "\n"; for such tokenizers the text is encoded serially. tests/tokenizer checks
// encode_parallel == encode on the Brown corpus and edge cases.
#include <algorithm>

#include "core/thread_pool.h"
#include "tokenizer/tokenizer.h"

namespace dsq::tokenizer {
namespace {

// Chunks below this size are not worth a thread hand-off.
constexpr size_t kMinChunkBytes = 64 * 1024;

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// The first cut point at or after `from`: just past a '\n' whose next byte is neither
// ASCII whitespace nor a UTF-8 lead/continuation byte (non-ASCII whitespace such as
// U+3000 would join a whitespace run). text.size() when there is none.
size_t next_cut(std::string_view text, size_t from) {
  for (size_t p = text.find('\n', from); p != std::string_view::npos; p = text.find('\n', p + 1)) {
    if (p + 1 < text.size() && !is_ascii_space(text[p + 1]) &&
        static_cast<unsigned char>(text[p + 1]) < 0x80) {
      return p + 1;
    }
  }
  return text.size();
}

}  // namespace

std::vector<int32_t> Tokenizer::encode_parallel(std::string_view text) const {
  const auto threads = static_cast<size_t>(std::max(1, num_threads()));
  const bool newline_in_added_token = std::any_of(
      added_ids_.begin(), added_ids_.end(),
      [](const auto& entry) { return entry.first.find('\n') != std::string::npos; });
  if (threads == 1 || text.size() < 2 * kMinChunkBytes || newline_in_added_token) {
    return encode(text);
  }
  // A few chunks per thread evens out chunks of unequal cost.
  const size_t target = std::max(kMinChunkBytes, text.size() / (threads * 4));
  std::vector<size_t> cuts = {0};
  while (cuts.back() < text.size()) cuts.push_back(next_cut(text, cuts.back() + target));

  std::vector<std::vector<int32_t>> chunk_ids(cuts.size() - 1);
  parallel_for(static_cast<int64_t>(chunk_ids.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      chunk_ids[c] = encode(text.substr(cuts[c], cuts[c + 1] - cuts[c]));
    }
  });
  std::vector<int32_t> ids;
  size_t total = 0;
  for (const auto& chunk : chunk_ids) total += chunk.size();
  ids.reserve(total);
  for (const auto& chunk : chunk_ids) ids.insert(ids.end(), chunk.begin(), chunk.end());
  return ids;
}

}  // namespace dsq::tokenizer
