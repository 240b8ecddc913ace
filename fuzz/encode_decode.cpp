// Real tokenizers on arbitrary bytes: the first byte picks one, the rest is the text.
// Properties: no crash, every id inside the vocabulary, and decode(encode(s)) == s for valid
// UTF-8 s, except where the tokenizer loses text by design (as its reference does):
//   - s holds a special token's text (byte-level BPE matches it; decoding drops control ids);
//   - s holds a byte the vocabulary has no piece for (it encodes as unknown);
//   - the normalizer removes extra whitespace (stories260K's tok512, as sentencepiece);
//   - SentencePiece and s holds U+2581, its stand-in for a space.
// Tokenizers:
//   Llama-2's tokenizer.model and stories260K's tok512.model ($FLASHBACK_SHARED), SmolLM2's
//   byte-level BPE from the GGUF scripts/setup.sh fetches ($FLASHBACK_FUZZ_BPE overrides), and a
//   small byte-level vocabulary under each pre-tokenizer flashback knows.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <vector>

#include "flashback/tokenizer.hpp"
#include "harness.hpp"
#include "tokenizer_checks.hpp"

using namespace flashback;

namespace {

struct Subject {
  std::string name;
  Tokenizer tok;
  bool round_trips = true;            // the normalizer keeps the text as it is
  std::array<bool, 256> spelled{};    // bytes the vocabulary has a piece for
  std::vector<std::string> specials;  // texts that encode to control ids
};

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

// GPT-2's printable stand-in for byte b (byte-level BPE writes every byte so). Written apart from the
// library's map (src/tokenizer/bpe_tokenizer.cpp) on purpose: spelled_bytes decides with it which bytes
// must round-trip, and the library's own map would check itself.
std::string byte_level_char(int b) {
  auto printable = [](int c) { return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF); };
  int cp = b;
  if (!printable(b)) {  // the others take 256, 257, ... in byte order
    cp = 256;
    for (int c = 0; c < b; ++c) cp += !printable(c);
  }
  return cp < 0x80 ? std::string(1, char(cp)) : std::string{char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
}

// 256 byte tokens in GPT-2's printable alphabet, a few merges, two special tokens.
Tokenizer small_byte_level(const std::string& pre) {
  BpeModel b;
  for (int c = 0; c < 256; ++c) b.tokens.push_back(byte_level_char(c));
  const std::string sp = "\xC4\xA0";  // GPT-2's printable space
  for (const auto& [l, r] : std::vector<std::pair<std::string, std::string>>{
           {"t", "h"}, {"th", "e"}, {sp, "the"}, {"i", "n"}, {sp, "a"}, {"e", "r"}, {"1", "2"}}) {
    b.merges.emplace_back(l, r);
    b.tokens.push_back(l + r);
  }
  b.types.assign(b.tokens.size(), PieceType::Normal);
  b.tokens.push_back("<|endoftext|>");
  b.types.push_back(PieceType::Control);
  b.tokens.push_back("<|user|>");
  b.types.push_back(PieceType::UserDefined);
  b.eos_id = static_cast<int32_t>(b.tokens.size()) - 2;
  b.pre = pre;
  return Tokenizer(std::move(b), "small-" + pre);
}

// The bytes the vocabulary has a piece for: a byte without one encodes as unknown (HF tokenizers
// and llama.cpp alike), which no decoder can undo. SmolLM2 lacks six control characters.
std::array<bool, 256> spelled_bytes(const Tokenizer& t) {
  std::array<bool, 256> has{};
  char buf[8];
  for (int c = 0; c < 256; ++c) {
    if (t.family() == TokenizerFamily::ByteLevelBpe) {
      has[c] = t.piece_to_id(byte_level_char(c)) >= 0;
    } else {
      std::snprintf(buf, sizeof buf, "<0x%02X>", c);
      const int32_t id = t.piece_to_id(buf);
      has[c] = id >= 0 && t.piece_type(id) == PieceType::Byte && t.model().byte_fallback;
    }
  }
  return has;
}

std::vector<Subject> load() {
  std::vector<Subject> s;
  const std::string shared = env_or("FLASHBACK_SHARED", FLASHBACK_SHARED_DEFAULT);
  for (const char* rel : {"models/llama2-tokenizer/tokenizer.model", "models/stories260K/tok512.model"}) {
    const std::string path = shared + "/" + rel;
    if (!std::filesystem::exists(path)) {
      std::cerr << "encode_decode: " << path << " is missing (FLASHBACK_SHARED): cannot fuzz without it\n";
      std::abort();
    }
    s.push_back({rel, Tokenizer::from_file(path)});
  }
  const std::string bpe = env_or("FLASHBACK_FUZZ_BPE", env_or("HOME", "/root") +
                                                           "/.cache/flashback/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (std::filesystem::exists(bpe)) {
    s.push_back({"SmolLM2", Tokenizer::from_file(bpe)});
  } else {
    std::cerr << "encode_decode: warning: no SmolLM2 tokenizer at " << bpe
              << " (scripts/setup.sh fetches it; FLASHBACK_FUZZ_BPE): byte-level BPE on small vocabularies only\n";
  }
  for (const std::string& pre : bpe_pre_tokenizers()) s.push_back({"small-" + pre, small_byte_level(pre)});
  for (Subject& x : s) {
    // A normalizer that removes extra whitespace (tok512's) loses it by design, as sentencepiece does.
    x.round_trips = x.tok.family() == TokenizerFamily::ByteLevelBpe || !x.tok.model().remove_extra_whitespaces;
    x.spelled = spelled_bytes(x.tok);
    // Byte-level BPE matches its special tokens in text (HF, llama.cpp); SentencePiece does not.
    for (int32_t id = 0; x.tok.family() == TokenizerFamily::ByteLevelBpe && id < x.tok.vocab_size(); ++id)
      if (x.tok.piece_type(id) == PieceType::Control && !x.tok.id_to_piece(id).empty())
        x.specials.push_back(x.tok.id_to_piece(id));
  }
  return s;
}

}  // namespace

FLASHBACK_FUZZ_TARGET(encode_decode) {
  static const std::vector<Subject> subjects = load();
  if (size == 0) return;
  const Subject& s = subjects[data[0] % subjects.size()];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  fuzz::check_tokenizer(s.tok, text);
  if (!s.round_trips || !fuzz::valid_utf8(text)) return;
  for (unsigned char c : text)
    if (!s.spelled[c]) return;
  for (const std::string& sp : s.specials)
    if (text.find(sp) != std::string_view::npos) return;
  // SentencePiece writes spaces as U+2581: one in the text decodes as a space (sentencepiece too).
  if (s.tok.family() == TokenizerFamily::SentencePiece && text.find("\xE2\x96\x81") != std::string_view::npos) return;
  const std::string back = s.tok.decode(s.tok.encode(text));
  if (back != text) {
    size_t at = 0;
    while (at < back.size() && at < text.size() && back[at] == text[at]) ++at;
    auto show = [&](std::string_view v) {
      std::string out;
      char buf[8];
      for (unsigned char c : v.substr(at >= 8 ? at - 8 : 0, 24)) {
        std::snprintf(buf, sizeof buf, c >= 0x20 && c < 0x7F ? "%c" : "\\x%02X", c);
        out += buf;
      }
      return out;
    };
    std::cerr << "encode_decode: " << s.name << " does not round-trip " << text.size() << " bytes: from byte " << at
              << " the text is \"" << show(text) << "\", the decoded \"" << show(back) << "\"\n";
    FUZZ_CHECK(back == text);
  }
}
