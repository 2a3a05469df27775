// Tokenizer encode/decode against ids produced by HF `tokenizers` (the fixture file), plus
// the properties HF does not pin down: round trips, added-token lookup, invalid UTF-8 and
// concurrent use.
#include <gtest/gtest.h>

#include <thread>

#include "fixture_tokenizers.h"
#include "core/thread_pool.h"
#include "support/paths.h"
#include "tokenizer/byte_level.h"

namespace dsq::tokenizer {
namespace {

using test::deepseek_v3_fixture;
using test::deepseek_v3_tokenizer;
using test::tiny_brown_tokenizer;

// Index of the first differing id (or the shorter length), for readable failures.
size_t first_difference(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

TEST(DeepSeekV3Tokenizer, EncodesEveryFixtureCaseLikeHF) {
  const auto& cases = deepseek_v3_fixture().at("cases");
  ASSERT_GT(cases.size(), 0u);
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = deepseek_v3_tokenizer().encode(text);
    EXPECT_EQ(ids, expected) << "text: " << text << "\nfirst difference at id "
                             << first_difference(ids, expected);
    EXPECT_EQ(deepseek_v3_tokenizer().decode(expected), c.at("decoded").get<std::string>());
    EXPECT_EQ(deepseek_v3_tokenizer().decode(ids), text);
  }
}

TEST(DeepSeekV3Tokenizer, EncodesTheBrownValidationCorpusLikeHF) {
  const auto& corpus = deepseek_v3_fixture().at("corpus");
  const std::string text =
      read_file(test::shared_path(corpus.at("file").get<std::string>()));
  const auto expected = corpus.at("ids").get<std::vector<int32_t>>();
  ASSERT_EQ(expected.size(), corpus.at("num_ids").get<size_t>());
  const std::vector<int32_t> ids = deepseek_v3_tokenizer().encode(text);
  ASSERT_EQ(ids.size(), expected.size()) << "first difference at id " << first_difference(ids, expected);
  EXPECT_EQ(first_difference(ids, expected), ids.size());
  EXPECT_EQ(deepseek_v3_tokenizer().decode(ids), text);
}

TEST(DeepSeekV3Tokenizer, SpecialTokensFromTokenizerConfig) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  const int32_t bos = tok.token_id("<\uFF5Cbegin\u2581of\u2581sentence\uFF5C>");
  const int32_t eos = tok.token_id("<\uFF5Cend\u2581of\u2581sentence\uFF5C>");
  ASSERT_GE(bos, 0);
  ASSERT_GE(eos, 0);
  EXPECT_NE(bos, eos);
  EXPECT_EQ(tok.bos_id(), bos);
  EXPECT_EQ(tok.eos_id(), eos);
  EXPECT_TRUE(tok.is_special(bos));
  EXPECT_EQ(tok.token_id("no such token"), -1);
  // Vocab tokens are looked up in tokenizer.json's byte-level spelling.
  const int32_t the = tok.token_id("\u0120the");
  ASSERT_GE(the, 0);
  EXPECT_EQ(tok.token_bytes(the), " the");
  // 128000 BPE tokens plus added tokens up to id 128814 (both counted from the file).
  EXPECT_GT(tok.vocab_size(), 128000u);
}

TEST(DeepSeekV3Tokenizer, AddedTokensSplitTextAndCanBeSkippedInDecode) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  // In DeepSeek-V3, <｜User｜> is an added token that is not "special" (decode keeps it
  // even when skipping special tokens), while the sentence tokens are special.
  const std::string user = "<\uFF5CUser\uFF5C>";
  const int32_t user_id = tok.token_id(user);
  ASSERT_GE(user_id, 0);
  ASSERT_FALSE(tok.is_special(user_id));
  const std::string bos = "<\uFF5Cbegin\u2581of\u2581sentence\uFF5C>";
  const std::string text = bos + "Hi" + user + "there" + user;
  const std::vector<int32_t> ids = tok.encode(text);
  const std::vector<int32_t> hi = tok.encode("Hi");
  const std::vector<int32_t> there = tok.encode("there");
  std::vector<int32_t> expected = {tok.bos_id()};
  expected.insert(expected.end(), hi.begin(), hi.end());
  expected.push_back(user_id);
  expected.insert(expected.end(), there.begin(), there.end());
  expected.push_back(user_id);
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.decode(ids, /*skip_special=*/true), "Hi" + user + "there" + user);
  // A truncated added token is ordinary text.
  const std::vector<int32_t> partial = tok.encode("<\uFF5CUser");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), user_id), 0);
  EXPECT_EQ(tok.decode(partial), "<\uFF5CUser");
}

TEST(DeepSeekV3Tokenizer, InvalidUtf8RoundTripsByteExactly) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  const std::string inputs[] = {"\xFF", "abc\xC3", "\xE2\x82 x \x80\x80\xF0\x9F\x98", "\xED\xA0\x80z",
                                std::string("nul\0byte", 8)};
  for (const std::string& input : inputs) {
    const std::vector<int32_t> ids = tok.encode(input);
    EXPECT_EQ(tok.decode(ids), input);
  }
}

TEST(DeepSeekV3Tokenizer, DecodeRejectsUnknownIdsNamingTheFile) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  const std::vector<int32_t> bad = {-1};
  const std::vector<int32_t> too_big = {static_cast<int32_t>(tok.vocab_size())};
  for (const auto& ids : {bad, too_big}) {
    try {
      tok.decode(ids);
      FAIL() << "decode accepted id " << ids[0];
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
    }
  }
}

TEST(DeepSeekV3Tokenizer, ConcurrentEncodesAgree) {
  // Encoding shares a piece cache between threads; results must not depend on it.
  const auto& corpus = deepseek_v3_fixture().at("corpus");
  const std::string text = read_file(test::shared_path(corpus.at("file").get<std::string>()));
  const std::string part = text.substr(0, 100000);
  const std::vector<int32_t> reference = deepseek_v3_tokenizer().encode(part);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) threads.emplace_back([&] { r = deepseek_v3_tokenizer().encode(part); });
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_EQ(r, reference);
}

TEST(DeepSeekV3Tokenizer, ParallelEncodeMatchesSerialEncode) {
  const Tokenizer& tok = deepseek_v3_tokenizer();
  set_num_threads(2);
  // The Brown corpus, and the fixture cases (whitespace runs, CRLF, CJK, added tokens)
  // joined by newlines and repeated until the text is long enough to be cut into chunks.
  const auto& corpus = deepseek_v3_fixture().at("corpus");
  const std::string brown = read_file(test::shared_path(corpus.at("file").get<std::string>()));
  EXPECT_EQ(tok.encode_parallel(brown), tok.encode(brown));
  std::string mixed;
  while (mixed.size() < 1'000'000) {
    for (const auto& c : deepseek_v3_fixture().at("cases")) mixed += c.at("text").get<std::string>() + "\n";
    mixed += "\n \n\t\r\n";
  }
  EXPECT_EQ(tok.encode_parallel(mixed), tok.encode(mixed));
}

TEST(TinyBrownTokenizer, LoadsFromModelDirAndRoundTripsABrownParagraph) {
  const Tokenizer& tok = tiny_brown_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 4096u);
  EXPECT_EQ(tok.bos_id(), tok.token_id("<\uFF5Cbegin\u2581of\u2581sentence\uFF5C>"));
  EXPECT_EQ(tok.eos_id(), tok.token_id("<\uFF5Cend\u2581of\u2581sentence\uFF5C>"));
  EXPECT_GE(tok.bos_id(), 0);
  const std::string text = read_file(test::shared_path("data/brown/valid.txt"));
  const std::string paragraph = text.substr(0, text.find('\n', 2000) + 1);
  const std::vector<int32_t> ids = tok.encode(paragraph);
  // BPE trained on Brown compresses English well below one token per byte (measured ~4
  // bytes/token); 2 bytes/token leaves wide slack while still failing on a byte-per-token
  // fallback.
  EXPECT_LT(ids.size() * 2, paragraph.size());
  EXPECT_EQ(tok.decode(ids), paragraph);
}

}  // namespace
}  // namespace dsq::tokenizer
