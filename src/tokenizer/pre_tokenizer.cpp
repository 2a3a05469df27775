// PCRE2-backed Split stages; see pre_tokenizer.h.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pre_tokenizer.h"

#include <pcre2.h>

#include "core/error.h"

namespace dsq::tokenizer {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// Per-thread match state shared by all patterns: the match data only needs the overall
// match (one pair), and a JIT stack larger than the default 32 KiB machine stack keeps
// long runs of whitespace or letters from hitting the JIT stack limit.
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);

  MatchScratch() {
    if (data == nullptr || jit_stack == nullptr || context == nullptr) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchScratch() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& match_scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

// Length of the UTF-8 character starting at `p` (1 for a stray byte), used to step over
// an empty match without landing inside a character.
size_t char_length(std::string_view text, size_t p) {
  size_t n = 1;
  while (p + n < text.size() && (static_cast<unsigned char>(text[p + n]) & 0xC0) == 0x80) ++n;
  return n;
}

// HF compiles Split patterns with Oniguruma, whose \s is exactly Unicode White_Space.
// PCRE2's UCP \s also matches U+180E (kept in its \h list for Perl compatibility, though
// Unicode 6.3 made it a format character), so the first pattern below would split
// Mongolian text differently from HF. \s and \S are therefore rewritten as the explicit
// White_Space set: separators (\p{Z}), \t..\r and NEL. Other escapes pass through.
constexpr std::string_view kWhiteSpaceSet = "\\p{Z}\\t-\\r\\x{85}";

std::string onig_to_pcre2(const std::string& pattern, const std::string& source) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[++i];
      if (next == 's') {
        out += in_class ? std::string(kWhiteSpaceSet) : "[" + std::string(kWhiteSpaceSet) + "]";
      } else if (next == 'S') {
        DSQ_CHECK(!in_class, source, ": pre-tokenizer regex /", pattern,
                  "/ uses \\S inside a character class, which dsq cannot translate for PCRE2");
        out += "[^" + std::string(kWhiteSpaceSet) + "]";
      } else {
        out += c;
        out += next;
      }
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
    } else if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);  // a POSIX class such as [:alpha:]
      if (end != std::string::npos) {
        out.append(pattern, i + 1, end + 2 - (i + 1));
        i = end + 1;
      }
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

}  // namespace

struct PreTokenizer::Compiled {
  pcre2_code* code = nullptr;
  std::string pattern;
  ~Compiled() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(const std::vector<Stage>& stages, const std::string& source)
    : source_(source) {
  for (const Stage& stage : stages) {
    auto compiled = std::make_unique<Compiled>();
    compiled->pattern = stage.pattern;
    const std::string pcre2_pattern = stage.is_literal ? stage.pattern : onig_to_pcre2(stage.pattern, source);
    // (PCRE2_LITERAL rejects PCRE2_UCP, which only matters for character classes anyway.)
    const uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF |
                             (stage.is_literal ? PCRE2_LITERAL : PCRE2_UCP);
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern.data()),
                                   pcre2_pattern.size(), options, &error_code, &error_offset,
                                   nullptr);
    DSQ_CHECK(compiled->code != nullptr, source, ": pre-tokenizer regex /", stage.pattern,
              "/ does not compile at offset ", error_offset, ": ", pcre2_message(error_code));
    // JIT is a speed-up only: when unavailable pcre2_match interprets the pattern.
    pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE);
    stages_.push_back(std::move(compiled));
  }
}

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

void PreTokenizer::split(std::string_view text, FunctionRef<void(std::string_view)> emit) const {
  if (!text.empty()) split_at_stage(0, text, emit);
}

void PreTokenizer::split_at_stage(size_t stage, std::string_view text,
                                  FunctionRef<void(std::string_view)> emit) const {
  if (stage == stages_.size()) {
    emit(text);
    return;
  }
  const Compiled& regex = *stages_[stage];
  MatchScratch& scratch = match_scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t piece_start = 0;  // start of the pending gap
  size_t search_from = 0;
  while (search_from < text.size()) {
    const int rc = pcre2_match(regex.code, subject, text.size(), search_from, 0, scratch.data,
                               scratch.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    DSQ_CHECK(rc >= 0, source_, ": pre-tokenizer regex /", regex.pattern,
              "/ failed: ", pcre2_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
    const size_t match_start = ovector[0];
    const size_t match_end = ovector[1];
    if (match_end == match_start) {  // an empty match isolates nothing
      search_from = match_start + char_length(text, match_start);
      continue;
    }
    if (match_start > piece_start) {
      split_at_stage(stage + 1, text.substr(piece_start, match_start - piece_start), emit);
    }
    split_at_stage(stage + 1, text.substr(match_start, match_end - match_start), emit);
    piece_start = search_from = match_end;
  }
  if (piece_start < text.size()) split_at_stage(stage + 1, text.substr(piece_start), emit);
}

}  // namespace dsq::tokenizer
