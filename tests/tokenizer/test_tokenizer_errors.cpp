// Tokenizer behaviour on small hand-written tokenizer.json files: merge order, added-token
// longest match, and the errors for broken or unsupported files (each must name the file).
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "support/paths.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

namespace dsq::tokenizer {
namespace {

using nlohmann::json;

// A minimal byte-level BPE tokenizer.json: the 256 byte tokens (ids 0..255) plus one token
// per merge, merges given as byte strings in rank order.
json synthetic_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(static_cast<unsigned char>(b))] = b;
  json merge_list = json::array();
  for (const auto& [left, right] : merges) {
    const std::string merged = byte_level_encode(left + right);
    if (!vocab.contains(merged)) vocab[merged] = static_cast<int>(vocab.size());
    merge_list.push_back(json::array({byte_level_encode(left), byte_level_encode(right)}));
  }
  return {
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"},
                       {"pattern", {{"Regex", " ?\\p{L}+|\\s+"}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}},
  };
}

std::string write_file(const std::string& name, const std::string& content) {
  const std::string path = test::make_temp_dir("tokenizer") + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

Tokenizer load_json(const json& j) { return Tokenizer::load(write_file("tokenizer.json", j.dump())); }

// Runs `load` and returns the dsq::Error message it throws ("" if it does not throw).
template <typename F>
std::string error_of(F&& load) {
  try {
    load();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

int32_t id_of(const Tokenizer& tok, const std::string& bytes) {
  return tok.token_id(byte_level_encode(bytes));
}

TEST(SyntheticTokenizer, MergesByRankThenLeftmost) {
  // "ab" outranks "bc", so "abc" -> ab|c; in "aaa" the leftmost "aa" wins the tie.
  const Tokenizer tok = load_json(synthetic_tokenizer({{"a", "b"}, {"b", "c"}, {"a", "a"}}));
  EXPECT_EQ(tok.encode("abc"), (std::vector<int32_t>{id_of(tok, "ab"), id_of(tok, "c")}));
  EXPECT_EQ(tok.encode("bcab"), (std::vector<int32_t>{id_of(tok, "bc"), id_of(tok, "ab")}));
  EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{id_of(tok, "aa"), id_of(tok, "a")}));
  // Merges chain: "ab"+"ab" only after both halves exist; pieces never merge across the
  // pre-tokenizer boundary (" abab" is one piece, "\n" another).
  const Tokenizer chained = load_json(synthetic_tokenizer({{"a", "b"}, {"ab", "ab"}, {" ", "abab"}}));
  EXPECT_EQ(chained.encode(" abab\n"), (std::vector<int32_t>{id_of(chained, " abab"), '\n'}));
}

TEST(SyntheticTokenizer, AddedTokensTakeTheLongestMatch) {
  json j = synthetic_tokenizer({});
  j["added_tokens"] = json::array({
      {{"id", 300}, {"content", "<a>"}, {"special", true}, {"normalized", false}},
      {{"id", 301}, {"content", "<a><b>"}, {"special", false}, {"normalized", false}},
  });
  const Tokenizer tok = load_json(j);
  EXPECT_EQ(tok.vocab_size(), 302u);
  EXPECT_EQ(tok.encode("x<a><b><a>"), (std::vector<int32_t>{'x', 301, 300}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{'x', 301, 300}, /*skip_special=*/true), "x<a><b>");
  // Ids between the vocab and the added tokens that nothing uses are rejected by decode.
  EXPECT_THROW(tok.decode(std::vector<int32_t>{299}), Error);
}

TEST(TokenizerErrors, MissingFileNamesThePath) {
  const std::string dir = test::make_temp_dir("tokenizer");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir + "/nope.json"); }).find(dir + "/nope.json"),
            std::string::npos);
  // A directory without tokenizer.json.
  const std::string message = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(message.find(dir), std::string::npos) << message;
  EXPECT_NE(message.find("tokenizer.json"), std::string::npos) << message;
}

TEST(TokenizerErrors, MalformedJsonNamesTheFile) {
  const std::string path = write_file("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
  const std::string message = error_of([&] { Tokenizer::load(path); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("malformed JSON"), std::string::npos) << message;
}

TEST(TokenizerErrors, UnsupportedModelTypeNamesFileAndType) {
  json j = synthetic_tokenizer({});
  j["model"]["type"] = "WordPiece";
  j["decoder"] = {{"type", "WordPiece"}};  // the model type is still what gets reported
  const std::string path = write_file("tokenizer.json", j.dump());
  const std::string message = error_of([&] { Tokenizer::load(path); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("WordPiece"), std::string::npos) << message;
}

TEST(TokenizerErrors, UnsupportedOrBrokenPartsNameTheFile) {
  std::vector<json> broken;
  broken.push_back(synthetic_tokenizer({}));
  broken.back()["normalizer"] = {{"type", "NFC"}};
  broken.push_back(synthetic_tokenizer({}));
  broken.back()["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  broken.push_back(synthetic_tokenizer({}));
  broken.back()["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  broken.push_back(synthetic_tokenizer({{"a", "b"}}));
  broken.back()["model"]["merges"][0] = json::array({"a", "zz"});  // not in the vocab
  broken.push_back(synthetic_tokenizer({}));
  broken.back()["model"]["vocab"].erase("a");  // byte 'a' has no token
  broken.push_back(synthetic_tokenizer({}));
  broken.back()["model"].erase("merges");
  for (const json& j : broken) {
    const std::string path = write_file("tokenizer.json", j.dump());
    const std::string message = error_of([&] { Tokenizer::load(path); });
    EXPECT_NE(message.find(path), std::string::npos) << "message: '" << message << "'";
  }
}

}  // namespace
}  // namespace dsq::tokenizer
