// PreTokenizer: HF Split(Isolated) semantics on small patterns.
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsq::tokenizer {
namespace {

std::vector<std::string> pieces(const PreTokenizer& pre, std::string_view text) {
  std::vector<std::string> out;
  pre.split(text, [&](std::string_view piece) { out.emplace_back(piece); });
  return out;
}

using Pieces = std::vector<std::string>;

TEST(PreTokenizer, LaterStagesSeeEachPieceAsTheWholeSubject) {
  // Stage 1 cuts "ab  12345" into "ab  " | "123" | "45". In stage 2 the lookahead of
  // \s+(?!\S) sees the end of "ab  ", so both spaces stay together; on the whole text it
  // would stop before the last space (followed by "1").
  const PreTokenizer pre({{"\\p{N}{1,3}"}, {"\\s+(?!\\S)|\\s+|\\S+"}}, "test");
  EXPECT_EQ(pieces(pre, "ab  12345"), (Pieces{"ab", "  ", "123", "45"}));
  const PreTokenizer one_stage({{"\\s+(?!\\S)|\\s+|\\S+"}}, "test");
  EXPECT_EQ(pieces(one_stage, "ab  12"), (Pieces{"ab", " ", " ", "12"}));
}

TEST(PreTokenizer, GapsBetweenMatchesArePiecesToo) {
  const PreTokenizer pre({{"\\p{L}+"}}, "test");
  EXPECT_EQ(pieces(pre, "--héllo, wörld!"), (Pieces{"--", "héllo", ", ", "wörld", "!"}));
  EXPECT_EQ(pieces(pre, ""), Pieces{});
}

TEST(PreTokenizer, InvalidUtf8NeverMatchesAndLandsInGaps) {
  const PreTokenizer pre({{"\\p{L}+"}}, "test");
  EXPECT_EQ(pieces(pre, "ab\xFF\xC3" "cd\xE2\x82"), (Pieces{"ab", "\xFF\xC3", "cd", "\xE2\x82"}));
}

TEST(PreTokenizer, EmptyMatchesAndLiteralPatterns) {
  const PreTokenizer empty_matches({{"x*"}}, "test");
  EXPECT_EQ(pieces(empty_matches, "axxbé"), (Pieces{"a", "xx", "bé"}));
  const PreTokenizer literal({{"a+", /*is_literal=*/true}}, "test");
  EXPECT_EQ(pieces(literal, "aaa+b"), (Pieces{"aa", "a+", "b"}));
}

TEST(PreTokenizer, WhitespaceEscapesMeanUnicodeWhiteSpaceLikeOniguruma) {
  // U+180E stopped being White_Space in Unicode 6.3; Oniguruma (HF) agrees, PCRE2's own \s
  // does not. U+3000 and NEL (U+0085) are White_Space.
  const PreTokenizer pre({{"\\s+|\\S+"}}, "test");
  EXPECT_EQ(pieces(pre, "a\u180Eb\u3000c\u0085"), (Pieces{"a\u180Eb", "\u3000", "c", "\u0085"}));
  const PreTokenizer in_class({{"[\\sx]+"}}, "test");
  EXPECT_EQ(pieces(in_class, "ax \u180Ex"), (Pieces{"a", "x ", "\u180E", "x"}));
  // ']' first in a class is a member; escapes after it are still translated.
  const PreTokenizer bracket({{"[]\\s]+"}}, "test");
  EXPECT_EQ(pieces(bracket, "a] ]b"), (Pieces{"a", "] ]", "b"}));
  EXPECT_THROW(PreTokenizer({{"[\\Sx]"}}, "test"), Error);
}

TEST(PreTokenizer, BadPatternNamesSourceAndPattern) {
  try {
    PreTokenizer({{"(unclosed"}}, "some/tokenizer.json");
    FAIL() << "bad pattern accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("some/tokenizer.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(unclosed"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsq::tokenizer
