// Internal to src/tokenizer: the UTF-8 rules sentencepiece applies, byte
// piece names, and the definitions of detail::PieceIndex (tokenizer.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "flashback/tokenizer.hpp"

namespace flashback {
namespace internal {

inline constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";      // U+2581
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// sentencepiece's OneCharLen: the UTF-8 length implied by a lead byte.
inline size_t one_char_len(char c) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<uint8_t>(c) >> 4];
}

inline bool is_trail(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

// Length of the well-formed UTF-8 character starting `s` (s non-empty), or 0
// when it is malformed: sentencepiece's DecodeUTF8 rules (no overlongs, no
// surrogates, nothing above U+10FFFF).
inline size_t valid_utf8_prefix(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[i])); };
  const uint32_t c0 = b(0);
  if (c0 < 0x80) return 1;
  auto ok = [](uint32_t cp, uint32_t min) { return cp >= min && (cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF)); };
  if (s.size() >= 2 && (c0 & 0xE0) == 0xC0) {
    return is_trail(s[1]) && ok(((c0 & 0x1F) << 6) | (b(1) & 0x3F), 0x80) ? 2 : 0;
  }
  if (s.size() >= 3 && (c0 & 0xF0) == 0xE0) {
    const uint32_t cp = ((c0 & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    return is_trail(s[1]) && is_trail(s[2]) && ok(cp, 0x800) ? 3 : 0;
  }
  if (s.size() >= 4 && (c0 & 0xF8) == 0xF0) {
    const uint32_t cp = ((c0 & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
    return is_trail(s[1]) && is_trail(s[2]) && is_trail(s[3]) && ok(cp, 0x10000) ? 4 : 0;
  }
  return 0;
}

// The shortest UTF-8 form of `cp` (<= 0x10FFFF; surrogates are written as
// their three bytes, as llama.cpp's unicode_cpt_to_utf8 does).
inline std::string encode_utf8(uint32_t cp) {
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  if (cp < 0x800) return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
  if (cp < 0x10000)
    return {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
            static_cast<char>(0x80 | (cp & 0x3F))};
  return {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
          static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
}

// True when `s` (non-empty) is a proper prefix of a character that more bytes
// could still complete, so a streaming decoder must wait before judging it.
inline bool incomplete_utf8(std::string_view s) {
  const auto c0 = static_cast<uint8_t>(s[0]);
  size_t need = 1;
  if ((c0 & 0xE0) == 0xC0) need = 2;
  else if ((c0 & 0xF0) == 0xE0) need = 3;
  else if ((c0 & 0xF8) == 0xF0) need = 4;
  if (s.size() >= need) return false;
  return std::all_of(s.begin() + 1, s.end(), is_trail);
}

// The byte of a "<0xXX>" piece (upper-case hex, as sentencepiece writes it), or -1.
inline int byte_piece_value(std::string_view p) {
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  const int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// "<0xXX>" exactly as sentencepiece spells byte pieces.
inline bool is_byte_piece(std::string_view p) { return byte_piece_value(p) >= 0; }

}  // namespace internal

namespace detail {

// A quick multiplicative hash over 8-byte words: pieces are short, and this
// runs for every candidate pair of every encode.
inline uint64_t hash_piece(std::string_view s) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t h = s.size() * kMul;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  if (i < s.size()) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  return (h ^ (h >> 32)) * kMul;
}

inline int32_t PieceIndex::find(std::string_view piece, const std::vector<SentencePieceModel::Piece>& pieces) const {
  if (slots_.empty()) return -1;
  const uint64_t h = hash_piece(piece);
  const auto tag = static_cast<uint32_t>(h >> 32);
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const Slot& slot = slots_[i];
    if (slot.id < 0) return -1;
    if (slot.tag == tag && pieces[static_cast<size_t>(slot.id)].piece == piece) return slot.id;
  }
}

inline int32_t PieceIndex::insert(int32_t id, const std::vector<SentencePieceModel::Piece>& pieces) {
  if ((size_ + 1) * 2 > slots_.size()) grow(pieces);
  const std::string_view piece = pieces[static_cast<size_t>(id)].piece;
  const uint64_t h = hash_piece(piece);
  const auto tag = static_cast<uint32_t>(h >> 32);
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    Slot& slot = slots_[i];
    if (slot.id < 0) {
      slot = {id, tag};
      ++size_;
      return -1;
    }
    if (slot.tag == tag && pieces[static_cast<size_t>(slot.id)].piece == piece) return slot.id;
  }
}

inline void PieceIndex::grow(const std::vector<SentencePieceModel::Piece>& pieces) {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(std::max<size_t>(16, old.size() * 2), Slot{});
  size_ = 0;
  for (const Slot& slot : old) {
    if (slot.id >= 0) insert(slot.id, pieces);
  }
}

}  // namespace detail

}  // namespace flashback
