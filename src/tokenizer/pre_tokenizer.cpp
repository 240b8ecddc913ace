#include "pre_tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "flashback/error.hpp"

namespace flashback::internal {

namespace {

// GPT-2's pattern (HF's ByteLevel pre-tokenizer; llama.cpp ends it at
// \s+(?!\S) and splits off what is left, which comes to the same).
const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Llama-3's (its tokenizer.json's, with (?i:...) spelled out as llama.cpp does).
const char* kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct Known {
  const char* name;
  std::vector<std::string> regexes;
};

const std::vector<Known>& known() {
  static const std::vector<Known> k = {
      {"gpt2", {kGpt2}},
      {"default", {kGpt2}},
      // SmolLM, StarCoder and kin: every digit alone, then GPT-2's pattern.
      {"smollm", {"\\p{N}", kGpt2}},
      {"starcoder", {"\\p{N}", kGpt2}},
      {"llama3", {kLlama3}},
      {"llama-bpe", {kLlama3}},
  };
  return k;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Regex() { pcre2_code_free(code); }
};

std::vector<std::string> PreTokenizer::patterns(const std::string& name) {
  for (const auto& k : known())
    if (name == k.name) return k.regexes;
  return {};
}

const std::vector<std::string>& PreTokenizer::names() {
  static const std::vector<std::string> n = [] {
    std::vector<std::string> v;
    for (const auto& k : known()) v.push_back(k.name);
    return v;
  }();
  return n;
}

PreTokenizer::PreTokenizer(const std::string& name) : name_(name) {
  const std::vector<std::string> pats = patterns(name);
  if (pats.empty()) {
    std::string list;
    for (const auto& n : names()) list += (list.empty() ? "" : ", ") + n;
    throw InvalidArgument("pre-tokenizer '" + name + "' is not supported (known: " + list + ")");
  }
  for (const auto& p : pats) {
    auto r = std::make_shared<Regex>();
    int err = 0;
    PCRE2_SIZE at = 0;
    r->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.c_str()), PCRE2_ZERO_TERMINATED,
                            PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &at, nullptr);
    if (!r->code) throw Error("pre-tokenizer '" + name + "': regex does not compile at " + std::to_string(at));
    r->jit = pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE) == 0;
    regexes_.push_back(std::move(r));
  }
}

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string_view> pieces = {text};
  if (text.empty()) return {};
  for (const auto& re : regexes_) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    if (!md) throw Error("pre-tokenizer: out of memory");
    std::vector<std::string_view> next;
    for (std::string_view piece : pieces) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t pos = 0, gap = 0;
      while (pos < piece.size()) {
        // The text is valid UTF-8 (the tokenizer made it so): no re-check per match.
        const int rc = re->jit ? pcre2_jit_match(re->code, subject, piece.size(), pos, 0, md, nullptr)
                               : pcre2_match(re->code, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          pcre2_match_data_free(md);
          throw Error("pre-tokenizer '" + name_ + "': regex match failed (" + std::to_string(rc) + ")");
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t b = ov[0], e = ov[1];
        if (e == b) {  // no pattern here matches empty text, but never loop on one
          ++pos;
          while (pos < piece.size() && (static_cast<uint8_t>(piece[pos]) & 0xC0) == 0x80) ++pos;
          continue;
        }
        if (b > gap) next.push_back(piece.substr(gap, b - gap));
        next.push_back(piece.substr(b, e - b));
        pos = gap = e;
      }
      if (gap < piece.size()) next.push_back(piece.substr(gap));
    }
    pcre2_match_data_free(md);
    pieces = std::move(next);
  }
  return pieces;
}

}  // namespace flashback::internal
