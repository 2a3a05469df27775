#include "tokenizer/paragraph_stream.h"

namespace dsq::tokenizer {

namespace {

constexpr std::string_view kWhitespace = " \t\n\r\f\v";

std::string_view strip(std::string_view s) {
  const size_t b = s.find_first_not_of(kWhitespace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kWhitespace) - b + 1);
}

}  // namespace

std::vector<int64_t> encode_paragraphs(const Tokenizer& tok, std::string_view text) {
  std::vector<int64_t> ids;
  auto add = [&](std::string_view block) {
    const std::string_view paragraph = strip(block);
    if (paragraph.empty()) return;
    if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
    for (int32_t id : tok.encode_parallel(paragraph)) ids.push_back(id);
    if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  };
  // A paragraph is a contiguous run of text between blank lines; it is stripped as a whole,
  // so its inner line breaks are kept as they are.
  size_t block_start = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    if (strip(text.substr(pos, end - pos)).empty()) {
      add(text.substr(block_start, pos - block_start));
      block_start = end + 1;
    }
    pos = end + 1;
  }
  if (block_start < text.size()) add(text.substr(block_start));
  return ids;
}

}  // namespace dsq::tokenizer
