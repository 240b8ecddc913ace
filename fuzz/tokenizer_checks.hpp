// What every tokenizer a harness builds must survive: encoding arbitrary text (ids inside the
// vocabulary), decoding whole and streamed, piece lookups.
#pragma once

#include <algorithm>
#include <string_view>
#include <vector>

#include "flashback/tokenizer.hpp"
#include "harness.hpp"

namespace flashback::fuzz {

inline std::vector<int32_t> check_encode(const Tokenizer& tok, std::string_view text, bool bos, bool eos) {
  const std::vector<int32_t> ids = tok.encode(text, bos, eos);
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
  return ids;
}

inline void check_tokenizer(const Tokenizer& tok, std::string_view text) {
  FUZZ_CHECK(tok.vocab_size() > 0);
  const std::vector<int32_t> ids = check_encode(tok, text, false, false);
  check_encode(tok, text, true, true);
  const std::string whole = tok.decode(ids);
  DecodeStream stream(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.put(id);
  streamed += stream.flush();
  // Pieces and ids: the first, the last and those the text used.
  std::vector<int32_t> probe = ids;
  probe.push_back(0);
  probe.push_back(tok.vocab_size() - 1);
  for (int32_t id : probe) {
    const std::string& piece = tok.id_to_piece(id);
    const int32_t back = tok.piece_to_id(piece);
    FUZZ_CHECK(back >= -1 && back < tok.vocab_size());
    (void)tok.piece_type(id);
    tok.decode({id});
  }
}

// Whether `s` is well-formed UTF-8 (no surrogates, no overlongs, at most U+10FFFF).
inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
    else return false;
    if (s.size() - i <= n) return false;  // truncated
    for (size_t k = 1; k <= n; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

}  // namespace flashback::fuzz
