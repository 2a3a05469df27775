// Loading a Tokenizer from HF tokenizer.json (+ tokenizer_config.json for bos/eos).
//
// Validates that the file uses only the byte-level BPE subset dsq implements (see
// tokenizer.h) and converts vocab and merges from the byte-level alphabet to raw bytes and
// id pairs. Every problem becomes one dsq::Error line naming the file.
#include <filesystem>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/read_file.h"
#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

namespace dsq::tokenizer {

namespace fs = std::filesystem;
using nlohmann::json;

class TokenizerLoader {
 public:
  explicit TokenizerLoader(std::string file) : file_(std::move(file)) {}

  Tokenizer load() {
    const json root = read_json(file_);
    try {
      // The model type first: for a non-BPE tokenizer it is the one error that matters.
      const json& model = root.at("model");
      const std::string type = model.value("type", std::string("(missing)"));
      DSQ_CHECK(type == "BPE", file_, ": unsupported tokenizer model type '", type,
                "' (dsq supports byte-level BPE)");
      check_bpe_options(model);
      check_normalizer(root.value("normalizer", json()));
      check_decoder(root.value("decoder", json()));
      PreTokenizer pre_tokenizer(pre_tokenizer_stages(root.at("pre_tokenizer")), file_);
      Tokenizer tok(file_, load_bpe(model), std::move(pre_tokenizer));
      const size_t model_size = tok.model_.size();
      tok.tokens_.resize(model_size);
      for (size_t id = 0; id < model_size; ++id) {
        const std::string& bytes = tok.model_.token_bytes(static_cast<int32_t>(id));
        if (bytes.empty()) continue;  // an unused id: stays kNone unless an added token has it
        tok.tokens_[id] = {bytes, Tokenizer::TokenKind::kModel};
      }
      if (root.contains("added_tokens") && !root.at("added_tokens").is_null()) {
        add_added_tokens(root.at("added_tokens"), tok);
      }
      set_bos_eos(tok);
      return tok;
    } catch (const json::exception& e) {
      throw error(file_, ": unexpected tokenizer.json structure: ", e.what());
    }
  }

 private:
  static json read_json(const std::string& file) {
    const std::string text = read_file(file);
    try {
      return json::parse(text);
    } catch (const json::exception& e) {
      throw error(file, ": malformed JSON: ", e.what());
    }
  }

  void check_normalizer(const json& normalizer) const {
    if (normalizer.is_null()) return;
    const bool empty_sequence = normalizer.value("type", "") == "Sequence" &&
                                normalizer.value("normalizers", json::array()).empty();
    DSQ_CHECK(empty_sequence, file_, ": unsupported normalizer ", normalizer.dump(),
              " (dsq supports none)");
  }

  void check_decoder(const json& decoder) const {
    DSQ_CHECK(decoder.is_object() && decoder.value("type", "") == "ByteLevel", file_,
              ": unsupported decoder ", decoder.dump(), " (dsq supports ByteLevel)");
  }

  void check_bpe_options(const json& model) const {
    const auto unset = [&](const char* key) {
      return !model.contains(key) || model.at(key).is_null() ||
             (model.at(key).is_string() && model.at(key).get<std::string>().empty());
    };
    DSQ_CHECK(unset("dropout"), file_, ": BPE dropout is not supported");
    DSQ_CHECK(unset("continuing_subword_prefix") && unset("end_of_word_suffix"), file_,
              ": BPE subword prefix/suffix is not supported (byte-level BPE only)");
    DSQ_CHECK(!model.value("byte_fallback", false), file_, ": BPE byte_fallback is not supported");
  }

  std::vector<PreTokenizer::Stage> pre_tokenizer_stages(const json& node) const {
    std::vector<const json*> steps;
    if (node.is_object() && node.value("type", "") == "Sequence") {
      for (const json& step : node.at("pretokenizers")) steps.push_back(&step);
    } else {
      steps.push_back(&node);
    }
    std::vector<PreTokenizer::Stage> stages;
    bool saw_byte_level = false;
    for (const json* step : steps) {
      const std::string type = step->is_object() ? step->value("type", "") : "";
      DSQ_CHECK(!saw_byte_level, file_, ": pre-tokenizer step after ByteLevel is not supported");
      if (type == "Split") {
        DSQ_CHECK(step->value("behavior", "") == "Isolated" && !step->value("invert", false),
                  file_, ": unsupported Split pre-tokenizer ", step->dump(),
                  " (dsq supports behavior Isolated, invert false)");
        const json& pattern = step->at("pattern");
        if (pattern.contains("Regex")) {
          stages.push_back({pattern.at("Regex").get<std::string>(), false});
        } else {
          stages.push_back({pattern.at("String").get<std::string>(), true});
        }
      } else if (type == "ByteLevel") {
        DSQ_CHECK(!step->value("add_prefix_space", false) && !step->value("use_regex", true),
                  file_, ": unsupported ByteLevel pre-tokenizer ", step->dump(),
                  " (dsq supports add_prefix_space false, use_regex false)");
        saw_byte_level = true;
      } else {
        throw error(file_, ": unsupported pre-tokenizer ", step->dump());
      }
    }
    DSQ_CHECK(saw_byte_level, file_, ": pre-tokenizer has no ByteLevel step (dsq supports "
              "byte-level BPE only)");
    return stages;
  }

  BpeModel load_bpe(const json& model) const {
    const json& vocab = model.at("vocab");
    DSQ_CHECK(vocab.is_object(), file_, ": model.vocab is not an object");
    int64_t max_id = -1;
    for (const auto& [text, id] : vocab.items()) max_id = std::max<int64_t>(max_id, id.get<int64_t>());
    std::vector<std::string> token_bytes(static_cast<size_t>(max_id + 1));
    for (const auto& [text, id_json] : vocab.items()) {
      const auto id = id_json.get<int64_t>();
      DSQ_CHECK(id >= 0, file_, ": negative id for vocab token '", text, "'");
      // Tokens outside the byte-level alphabet (e.g. DeepSeek's "<｜begin▁of▁sentence｜>")
      // cannot come out of BPE; they are added tokens and decode as their literal text.
      token_bytes[id] = byte_level_decode(text).value_or(text);
      DSQ_CHECK(!text.empty(), file_, ": vocab has an empty token (id ", id, ")");
    }

    std::vector<BpeModel::Merge> merges;
    const json& merge_list = model.at("merges");
    merges.reserve(merge_list.size());
    // The JSON object is a std::map; a hash map makes the 3 lookups per merge cheap.
    std::unordered_map<std::string_view, int32_t> vocab_ids;
    vocab_ids.reserve(vocab.size());
    for (const auto& [text, id] : vocab.items()) vocab_ids.emplace(text, id.get<int32_t>());
    const auto id_of = [&](const std::string& token, size_t rank) -> int32_t {
      const auto it = vocab_ids.find(token);
      DSQ_CHECK(it != vocab_ids.end(), file_, ": merge ", rank, " uses '", token,
                "', which is not in the vocab");
      return it->second;
    };
    for (size_t rank = 0; rank < merge_list.size(); ++rank) {
      const json& m = merge_list[rank];
      std::string left, right;
      if (m.is_string()) {  // "left right"
        const std::string& s = m.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        DSQ_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos,
                  file_, ": merge ", rank, " '", s, "' is not two tokens separated by a space");
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else {  // ["left", "right"]
        DSQ_CHECK(m.is_array() && m.size() == 2, file_, ": merge ", rank, " is not a pair");
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      }
      merges.push_back({id_of(left, rank), id_of(right, rank), id_of(left + right, rank)});
    }
    try {
      return BpeModel(std::move(token_bytes), merges, model.value("ignore_merges", false));
    } catch (const Error& e) {
      throw error(file_, ": ", e.what());
    }
  }

  void add_added_tokens(const json& added, Tokenizer& tok) const {
    for (const json& t : added) {
      const auto id = t.at("id").get<int64_t>();
      const std::string content = t.at("content").get<std::string>();
      DSQ_CHECK(id >= 0 && id < (int64_t{1} << 31), file_, ": added token '", content,
                "' has invalid id ", id);
      DSQ_CHECK(!t.value("lstrip", false) && !t.value("rstrip", false) &&
                    !t.value("single_word", false),
                file_, ": added token '", content,
                "' uses lstrip/rstrip/single_word, which dsq does not support");
      DSQ_CHECK(!content.empty(), file_, ": added token ", id, " has empty content");
      if (static_cast<size_t>(id) >= tok.tokens_.size()) tok.tokens_.resize(id + 1);
      const bool special = t.value("special", false);
      tok.tokens_[id] = {content, special ? Tokenizer::TokenKind::kSpecial : Tokenizer::TokenKind::kAdded};
      tok.added_ids_[content] = static_cast<int32_t>(id);
      (t.value("normalized", false) ? tok.normalized_added_ : tok.raw_added_)
          .add(content, static_cast<int32_t>(id));
    }
  }

  // bos/eos from tokenizer_config.json beside the file (a string or an {"content": ...}
  // object), else DeepSeek's sentence tokens; -1 when the token does not exist.
  void set_bos_eos(Tokenizer& tok) const {
    std::string bos = "<｜begin▁of▁sentence｜>";
    std::string eos = "<｜end▁of▁sentence｜>";
    const fs::path config = fs::path(file_).parent_path() / "tokenizer_config.json";
    if (fs::exists(config)) {
      const json cfg = read_json(config.string());
      const auto token_text = [&](const char* key, std::string& out) {
        if (!cfg.contains(key)) return;
        const json& v = cfg.at(key);
        if (v.is_null()) {
          out.clear();
        } else if (v.is_string()) {
          out = v.get<std::string>();
        } else {
          DSQ_CHECK(v.is_object() && v.contains("content") && v.at("content").is_string(),
                    config.string(), ": ", key, " is neither a string nor {\"content\": ...}");
          out = v.at("content").get<std::string>();
        }
      };
      token_text("bos_token", bos);
      token_text("eos_token", eos);
    }
    tok.bos_id_ = bos.empty() ? -1 : tok.token_id(bos);
    tok.eos_id_ = eos.empty() ? -1 : tok.token_id(eos);
  }

  std::string file_;
};

Tokenizer Tokenizer::load(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) {
    file = (fs::path(path) / "tokenizer.json").string();
    DSQ_CHECK(fs::exists(file), path, ": model directory has no tokenizer.json");
  }
  DSQ_CHECK(fs::exists(file), file, ": tokenizer file does not exist");
  return TokenizerLoader(file).load();
}

}  // namespace dsq::tokenizer
