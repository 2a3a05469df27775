// IncrementalDetokenizer: streamed chunks are always whole UTF-8 and add up to decode().
#include <gtest/gtest.h>

#include "fixture_tokenizers.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/incremental_detokenizer.h"

namespace dsq::tokenizer {
namespace {

using test::deepseek_v3_tokenizer;
using test::is_valid_utf8;

// Streams `ids` one at a time, checking every chunk, and returns the concatenation.
std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special = false) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::string all;
  for (const int32_t id : ids) {
    const std::string chunk = detok.push(id);
    EXPECT_TRUE(is_valid_utf8(chunk)) << "chunk after id " << id << " ends mid-character";
    all += chunk;
  }
  const std::string tail = detok.finish();
  EXPECT_TRUE(is_valid_utf8(tail));
  return all + tail;
}

TEST(IncrementalDetokenizer, StreamsEveryFixtureCaseToItsFullDecode) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  size_t tokens_ending_mid_character = 0;
  for (const auto& c : test::deepseek_v3_fixture().at("cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    for (const int32_t id : ids) tokens_ending_mid_character += !is_valid_utf8(tok.token_bytes(id));
    EXPECT_EQ(stream(tok, ids), tok.decode(ids)) << c.at("text").get<std::string>();
    EXPECT_EQ(stream(tok, ids, true), tok.decode(ids, true));
  }
  // The emoji / CJK / Arabic cases must actually split characters across tokens, or this
  // test would not exercise the buffering at all.
  EXPECT_GT(tokens_ending_mid_character, 0u);
}

TEST(IncrementalDetokenizer, HoldsBackAPartialCharacterUntilItCompletes) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  const auto byte_id = [&](char b) { return tok.token_id(byte_level_encode(std::string(1, b))); };
  IncrementalDetokenizer detok(tok);
  const std::string euro = "\u20AC";  // E2 82 AC
  EXPECT_EQ(detok.push(byte_id('x')), "x");
  EXPECT_EQ(detok.push(byte_id(euro[0])), "");
  EXPECT_EQ(detok.push(byte_id(euro[1])), "");
  EXPECT_EQ(detok.push(byte_id(euro[2])), euro);
  EXPECT_EQ(detok.finish(), "");
}

TEST(IncrementalDetokenizer, ReplacesBytesThatCanNeverBecomeValid) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  const auto byte_id = [&](char b) { return tok.token_id(byte_level_encode(std::string(1, b))); };
  const std::string replacement = "\uFFFD";
  IncrementalDetokenizer detok(tok);
  EXPECT_EQ(detok.push(byte_id('\x80')), replacement);  // stray continuation byte
  EXPECT_EQ(detok.push(byte_id('\xE2')), "");
  EXPECT_EQ(detok.push(byte_id('\x82')), "");
  EXPECT_EQ(detok.push(byte_id('A')), replacement + "A");  // E2 82 cut short by 'A'
  EXPECT_EQ(detok.push(byte_id('\xF0')), "");
  EXPECT_EQ(detok.finish(), replacement);  // stream ended mid-character
}

}  // namespace
}  // namespace dsq::tokenizer
