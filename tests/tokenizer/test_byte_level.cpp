// The byte-level alphabet: a bijection between bytes and printable characters.
#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"

namespace dsq::tokenizer {
namespace {

TEST(ByteLevel, EveryByteRoundTrips) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  const std::string encoded = byte_level_encode(all);
  EXPECT_EQ(byte_level_decode(encoded), all);
}

TEST(ByteLevel, KnownCharacters) {
  EXPECT_EQ(byte_level_char(' '), "\u0120");   // "Ġ", the space marker of GPT-2 vocabs
  EXPECT_EQ(byte_level_char('\n'), "\u010A");  // "Ċ"
  EXPECT_EQ(byte_level_char('a'), "a");
  EXPECT_EQ(byte_level_decode("\u0120the"), " the");
}

TEST(ByteLevel, RejectsCharactersOutsideTheAlphabet) {
  EXPECT_FALSE(byte_level_decode("<\uFF5CUser\uFF5C>").has_value());  // fullwidth bar
  EXPECT_FALSE(byte_level_decode("\xC3").has_value());                 // truncated UTF-8
  EXPECT_FALSE(byte_level_decode("\u0200").has_value());               // just past the alphabet
}

}  // namespace
}  // namespace dsq::tokenizer
