// Byte-level BPE vocabularies written out in tests: GPT-2's byte alphabet and merges given by rank.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "flashback/tokenizer.hpp"

namespace flashback::test {

// GPT-2's printable alphabet for bytes outside it: ' ' -> U+0120 'Ġ', '\n' -> U+010A 'Ċ'.
inline const std::string kSpace = "\xC4\xA0", kNewline = "\xC4\x8A";

// All 256 single-byte tokens (ids 0..255, in GPT-2's alphabet), then `extra`.
inline BpeModel byte_vocab(const std::vector<std::string>& extra, const std::vector<std::pair<std::string, std::string>>& merges,
                    const std::string& pre = "gpt2") {
  BpeModel b;
  for (int c = 0; c < 256; ++c) {
    const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    static int next = 256;
    if (c == 0) next = 256;
    const int cp = printable ? c : next++;
    b.tokens.push_back(cp < 0x80 ? std::string(1, char(cp)) : std::string{char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))});
  }
  for (const auto& e : extra) b.tokens.push_back(e);
  b.types.assign(b.tokens.size(), PieceType::Normal);
  b.merges = merges;
  b.pre = pre;
  return b;
}

}  // namespace flashback::test
