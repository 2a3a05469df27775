// Calibration samples from a text file or a JSONL chat file (see calibration_data.h).
#include "quant/calibration_data.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/paragraph_stream.h"

namespace dsq::quant {

namespace {

std::string strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

void append(std::vector<int64_t>& out, const std::vector<int32_t>& ids) { out.insert(out.end(), ids.begin(), ids.end()); }

std::vector<std::vector<int64_t>> from_text(const std::string& path, const std::string& text,
                                            const tokenizer::Tokenizer& tok, int64_t n, int64_t len) {
  const std::vector<int64_t> stream = tokenizer::encode_paragraphs(tok, text);
  const int64_t available = int64_t(stream.size()) / len;
  DSQ_CHECK(available >= n, path, ": holds only ", available, " samples of ", len, " tokens, ", n, " requested");
  std::vector<std::vector<int64_t>> samples;
  for (int64_t s = 0; s < n; ++s) samples.emplace_back(stream.begin() + s * len, stream.begin() + (s + 1) * len);
  return samples;
}

std::vector<std::vector<int64_t>> from_jsonl(const std::string& path, std::istream& in,
                                             const tokenizer::Tokenizer& tok, int64_t n, int64_t len) {
  std::vector<std::vector<int64_t>> samples;
  std::string line;
  int64_t line_no = 0;
  while (int64_t(samples.size()) < n && std::getline(in, line)) {
    ++line_no;
    if (strip(line).empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw error(path, ":", line_no, ": invalid JSON (", e.what(), ")");
    }
    DSQ_CHECK(j.is_object() && j.contains("messages") && j["messages"].is_array(), path, ":", line_no,
              ": expected an object with a \"messages\" list");
    std::vector<int64_t> ids;
    if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
    for (const auto& m : j["messages"]) {
      DSQ_CHECK(m.is_object() && m.contains("role") && m.contains("content") && m["content"].is_string(), path,
                ":", line_no, ": each message needs a role and a string content");
      const std::string role = m["role"].get<std::string>(), content = m["content"].get<std::string>();
      if (role == "user") {
        append(ids, tok.encode("<｜User｜>" + content));
      } else if (role == "assistant") {
        append(ids, tok.encode("<｜Assistant｜></think>" + content));
        if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());
      } else {
        append(ids, tok.encode(content));
      }
    }
    if (int64_t(ids.size()) > len) ids.resize(size_t(len));
    if (ids.size() > 1) samples.push_back(std::move(ids));
  }
  DSQ_CHECK(int64_t(samples.size()) >= n, path, ": holds only ", samples.size(), " conversations, ", n, " requested");
  return samples;
}

}  // namespace

std::vector<std::vector<int64_t>> load_calibration_samples(const std::string& path, const tokenizer::Tokenizer& tok,
                                                           int64_t num_samples, int64_t seq_len) {
  DSQ_CHECK(num_samples > 0 && seq_len > 1, "calibration: need at least 1 sample of at least 2 tokens");
  std::ifstream in(path, std::ios::binary);
  DSQ_CHECK(in, path, ": cannot open the calibration file");
  const bool jsonl = path.size() >= 6 && path.substr(path.size() - 6) == ".jsonl";
  if (jsonl) return from_jsonl(path, in, tok, num_samples, seq_len);
  std::stringstream buf;
  buf << in.rdbuf();
  return from_text(path, buf.str(), tok, num_samples, seq_len);
}

}  // namespace dsq::quant
