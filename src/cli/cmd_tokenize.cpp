// `dsq tokenize <model dir or tokenizer.json> [--decode] [--threads N]`
//
// Encode (default): reads text from stdin (raw bytes, no trailing newline added or removed)
// and prints its token ids as one JSON array, without BOS/EOS. --decode: reads a JSON array
// of ids from stdin and writes the decoded text to stdout exactly (no newline appended), so
// `dsq tokenize M | dsq tokenize M --decode` reproduces the input. Encoding uses --threads
// (Tokenizer::encode_parallel). Bad JSON, non-integer elements and unknown ids are one-line
// errors. Tested by tests/tokenizer/test_cmd_tokenize.cpp (runs the built binary).
#include <cstdio>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsq::cli {
namespace {

struct TokenizeOptions {
  std::string tokenizer_path;
  bool decode = false;
};

std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  std::string data{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  DSQ_CHECK(!std::cin.bad(), "stdin: read error");
  return data;
}

void write_stdout(const std::string& data) {
  DSQ_CHECK(std::fwrite(data.data(), 1, data.size(), stdout) == data.size() && std::fflush(stdout) == 0,
            "stdout: write error");
}

std::vector<int32_t> parse_ids(const std::string& input) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(input);
  } catch (const nlohmann::json::exception& e) {
    throw error("stdin: malformed JSON (expected an array of token ids): ", e.what());
  }
  DSQ_CHECK(j.is_array(), "stdin: expected a JSON array of token ids, got ", j.type_name());
  std::vector<int32_t> ids;
  ids.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& v = j[i];
    DSQ_CHECK(v.is_number_integer(), "stdin: element ", i, " (", v.dump(),
              ") is not an integer token id");
    const auto id = v.get<int64_t>();
    DSQ_CHECK(id >= 0 && id <= std::numeric_limits<int32_t>::max(), "stdin: element ", i,
              " (", id, ") is not a valid token id");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

std::string ids_to_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  return out;
}

void run_tokenize(const TokenizeOptions& options) {
  const auto tok = tokenizer::Tokenizer::load(options.tokenizer_path);
  const std::string input = read_stdin();
  if (options.decode) {
    write_stdout(tok.decode(parse_ids(input)));
  } else {
    write_stdout(ids_to_json(tok.encode_parallel(input)));
  }
}

}  // namespace

void register_tokenize(CLI::App& app, CommonOptions& common) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Encode stdin text to a JSON array of token ids (or decode with --decode)");
  cmd->add_option("tokenizer", options->tokenizer_path, "Model directory or tokenizer.json")
      ->required();
  cmd->add_flag("--decode", options->decode, "Read a JSON array of ids from stdin, print text");
  add_threads_option(cmd, &common);
  cmd->callback([options, &common] {
    apply_common(common);
    run_tokenize(*options);
  });
}

}  // namespace dsq::cli
