// `dsq tokenize`, run as a process: encode output matches the HF fixture, encode | decode
// reproduces the input byte for byte, and bad input gives one clear error line.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fixture_tokenizers.h"
#include "support/paths.h"

namespace dsq::test {
namespace {

struct RunResult {
  int exit_code;
  std::string out;
  std::string err;
};

// Runs `dsq tokenize <args>` with `input` on stdin.
RunResult run_tokenize(const std::string& args, const std::string& input) {
  const std::string dir = make_temp_dir("cmd-tokenize");
  std::ofstream(dir + "/in", std::ios::binary) << input;
  const std::string command = dsq_binary() + " tokenize " + args + " < " + dir + "/in > " + dir +
                              "/out 2> " + dir + "/err";
  const int status = std::system(command.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(dir + "/out"), read_file(dir + "/err")};
}

const std::string& v3_path() {
  static const std::string path = shared_path("tokenizers/deepseek-v3/tokenizer.json");
  return path;
}

TEST(CmdTokenize, EncodesLikeTheFixture) {
  // Each run loads the 128k-merge tokenizer (~0.5 s), so take three representative cases
  // (the library test covers all): the first, the first non-ASCII one, the first with an
  // added token.
  const auto& all = deepseek_v3_fixture().at("cases");
  const auto first_where = [&](auto pred) {
    return *std::find_if(all.begin(), all.end(), [&](const auto& c) { return pred(c.at("text").template get<std::string>()); });
  };
  const nlohmann::json cases = {
      all.at(0),
      first_where([](const std::string& t) { return std::any_of(t.begin(), t.end(), [](char ch) { return ch < 0; }); }),
      first_where([](const std::string& t) { return t.find("<\uFF5C") != std::string::npos; })};
  for (const auto& c : cases) {
    const RunResult r = run_tokenize(v3_path(), c.at("text").get<std::string>());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out), c.at("ids")) << c.at("text");
  }
}

TEST(CmdTokenize, EncodeThenDecodeReproducesTheCorpus) {
  const std::string text = read_file(shared_path("data/brown/valid.txt"));
  const RunResult encoded = run_tokenize(v3_path() + " --threads 2", text);
  ASSERT_EQ(encoded.exit_code, 0) << encoded.err;
  EXPECT_EQ(nlohmann::json::parse(encoded.out), deepseek_v3_fixture().at("corpus").at("ids"));
  const RunResult decoded = run_tokenize(v3_path() + " --decode", encoded.out);
  ASSERT_EQ(decoded.exit_code, 0) << decoded.err;
  EXPECT_TRUE(decoded.out == text) << "decoded text differs from the input";
}

TEST(CmdTokenize, BadInputIsOneClearErrorLine) {
  struct Case {
    std::string args, input, expected_in_message;
  };
  const Case cases[] = {
      {v3_path() + " --decode", "[1, 2", "malformed JSON"},
      {v3_path() + " --decode", "{\"ids\": [1]}", "JSON array"},
      {v3_path() + " --decode", "[1, \"x\"]", "element 1"},
      {v3_path() + " --decode", "[1, 99999999]", "99999999"},
      {v3_path() + " --decode", "[-5]", "-5"},
      {"/nonexistent/tokenizer.json", "text", "/nonexistent/tokenizer.json"},
  };
  for (const Case& c : cases) {
    const RunResult r = run_tokenize(c.args, c.input);
    EXPECT_EQ(r.exit_code, 1) << c.args << " <<< " << c.input;
    EXPECT_NE(r.err.find(c.expected_in_message), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace dsq::test
