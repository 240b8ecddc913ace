// ByteLevelBpeTokenizer: GPT-2's byte-level BPE, as HF tokenizers and
// llama.cpp run it.
//
//   text ─ decoded as llama.cpp does (bad bytes -> U+FFFD) ─ special tokens cut out
//        ─ pre-tokenizer regexes ─ each piece's bytes as single-byte tokens
//        ─ merge the adjacent pair of lowest rank (leftmost on ties) until none
#include "bpe_tokenizer.hpp"

#include <algorithm>
#include <limits>
#include <queue>

#include "flashback/error.hpp"
#include "text_internal.hpp"

namespace flashback {

namespace internal {

namespace {
// bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other
// 68 get the code points 256, 257, ... in byte order.
struct ByteMap {
  std::string to_text[256];
  int16_t from_cp[512];  // code point -> byte, -1 when none
  ByteMap() {
    std::fill(std::begin(from_cp), std::end(from_cp), int16_t(-1));
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int cp = printable ? b : next++;
      from_cp[cp] = int16_t(b);
      to_text[b] = encode_utf8(uint32_t(cp));
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_map().to_text[b]; }

bool unicode_to_bytes(std::string_view text, std::string* bytes) {
  bytes->clear();
  for (size_t i = 0; i < text.size();) {
    const size_t n = valid_utf8_prefix(text.substr(i));
    if (n == 0 || n > 2) return false;  // every mapped code point is below 512
    const auto u = [&](size_t k) { return uint32_t(uint8_t(text[i + k])); };
    const uint32_t cp = n == 1 ? u(0) : ((u(0) & 0x1F) << 6) | (u(1) & 0x3F);
    if (cp >= 512 || byte_map().from_cp[cp] < 0) return false;
    bytes->push_back(char(byte_map().from_cp[cp]));
    i += n;
  }
  return true;
}

}  // namespace internal

namespace {

using internal::kReplacementChar;
using internal::encode_utf8;
using internal::is_trail;
using internal::valid_utf8_prefix;

// The text as llama.cpp's tokenizer reads it: characters are decoded by their
// structure alone (unicode_cpt_from_utf8), so an overlong form becomes its
// shortest form and a UTF-16 surrogate (ED A0..BF xx) stays a character; a
// byte that starts no such character becomes U+FFFD. `bytes` is what BPE
// encodes; `match` is the same text for the regexes, which need valid UTF-8:
// a surrogate there reads as U+E000, a private-use character of the same
// length that the regexes class alike (not a letter, digit or space).
struct Sanitized {
  std::string bytes, match;
  bool surrogates = false;
  std::string_view match_text() const { return surrogates ? std::string_view(match) : std::string_view(bytes); }
};

Sanitized sanitize_utf8(std::string_view text) {
  Sanitized out;
  out.bytes.reserve(text.size());
  auto put = [&](std::string_view b, std::string_view m) {
    out.bytes.append(b);
    if (out.surrogates) out.match.append(m);
  };
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(text[i])); };
  for (size_t i = 0; i < text.size();) {
    const uint32_t c0 = b(i);
    size_t len = c0 < 0x80 ? 1 : (c0 & 0xE0) == 0xC0 ? 2 : (c0 & 0xF0) == 0xE0 ? 3 : (c0 & 0xF8) == 0xF0 ? 4 : 0;
    if (len > 1 && (i + len > text.size() || !std::all_of(text.begin() + i + 1, text.begin() + i + len, is_trail)))
      len = 0;
    if (len == 0) {
      put(kReplacementChar, kReplacementChar);
      ++i;
      continue;
    }
    uint32_t cp = len == 1 ? c0 : c0 & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (b(i + k) & 0x3F);
    if (cp > 0x10FFFF) {  // llama.cpp refuses these; each byte is one U+FFFD here
      put(kReplacementChar, kReplacementChar);
      ++i;
      continue;
    }
    const std::string shortest = encode_utf8(cp);
    if (cp >= 0xD800 && cp <= 0xDFFF) {
      if (!out.surrogates) {
        out.surrogates = true;
        out.match = out.bytes;
      }
      put(shortest, "\xEE\x80\x80");  // U+E000
    } else {
      put(shortest, shortest);
    }
    i += len;
  }
  return out;
}

bool is_special(PieceType t) { return t == PieceType::Control || t == PieceType::UserDefined; }

// Streaming decode: bytes are held while they may still complete a character.
class BpeDecoder : public detail::DecoderState {
 public:
  explicit BpeDecoder(const ByteLevelBpeTokenizer& tok) : tok_(&tok) {}
  std::string put(int32_t id) override {
    pending_ += tok_->surface(id);
    return drain(false);
  }
  std::string flush() override { return drain(true); }

 private:
  std::string drain(bool final) {
    std::string out;
    size_t i = 0;
    while (i < pending_.size()) {
      const std::string_view rest(pending_.data() + i, pending_.size() - i);
      if (!final && internal::incomplete_utf8(rest)) break;
      const size_t n = valid_utf8_prefix(rest);
      out.append(n > 0 ? rest.substr(0, n) : kReplacementChar);
      i += n > 0 ? n : 1;
    }
    pending_.erase(0, i);
    return out;
  }

  const ByteLevelBpeTokenizer* tok_;
  std::string pending_;
};

}  // namespace

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer(BpeModel model, std::string source)
    : model_(std::move(model)), source_(std::move(source)), pre_([&] {
        try {
          return internal::PreTokenizer(model_.pre);
        } catch (const InvalidArgument& e) {
          throw FormatError(source_, e.what());
        }
      }()) {
  const int64_t n = static_cast<int64_t>(model_.tokens.size());
  if (n == 0) throw FormatError(source_, "the BPE vocabulary is empty");
  if (n >= std::numeric_limits<int32_t>::max()) throw FormatError(source_, "the BPE vocabulary is too large");
  if (model_.types.empty()) model_.types.assign(model_.tokens.size(), PieceType::Normal);
  if (model_.types.size() != model_.tokens.size())
    throw FormatError(source_, std::to_string(model_.types.size()) + " token types for " + std::to_string(n) + " tokens");
  for (const auto& [what, id] : {std::pair<const char*, int32_t>{"BOS", model_.bos_id}, {"EOS", model_.eos_id},
                                 {"unknown", model_.unk_id}, {"padding", model_.pad_id}})
    if (id < -1 || id >= n)
      throw FormatError(source_, std::string("the ") + what + " id " + std::to_string(id) + " is outside the vocabulary");

  surface_.resize(model_.tokens.size());
  std::string bytes;
  for (int32_t i = 0; i < static_cast<int32_t>(n); ++i) {
    const std::string& t = model_.tokens[size_t(i)];
    if (t.empty()) throw FormatError(source_, "token " + std::to_string(i) + " is empty");
    by_text_.emplace(t, i);  // the first of duplicates wins, as in llama.cpp
    const PieceType type = model_.types[size_t(i)];
    if (is_special(type)) {
      specials_.push_back(i);
      special_first_[uint8_t(t[0])] = true;
    }
    if (type == PieceType::Control) continue;  // decodes to nothing
    if (type == PieceType::Normal && internal::unicode_to_bytes(t, &bytes)) {
      surface_[size_t(i)] = bytes;
      by_bytes_.emplace(bytes, i);
    } else {
      surface_[size_t(i)] = t;  // user-defined and other tokens stand for their text
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(), [&](int32_t a, int32_t b) {
    return model_.tokens[size_t(a)].size() > model_.tokens[size_t(b)].size();
  });
  for (int b = 0; b < 256; ++b) {
    auto it = by_text_.find(internal::byte_to_unicode(uint8_t(b)));
    byte_ids_[b] = it == by_text_.end() ? -1 : it->second;
  }
  for (size_t r = 0; r < model_.merges.size(); ++r) {
    const std::string& a = model_.merges[r].first;  // not a structured binding: lambdas capture it
    const std::string& b = model_.merges[r].second;
    auto find = [&](const std::string& t) {
      auto it = by_text_.find(t);
      if (it == by_text_.end())
        throw FormatError(source_, "merge " + std::to_string(r) + " ('" + a + " " + b + "') names a token the vocabulary lacks: '" +
                                       t + "'");
      return it->second;
    };
    const int32_t ia = find(a), ib = find(b), merged = find(a + b);
    merges_.emplace(pair_key(ia, ib), Merge{static_cast<int32_t>(r), merged});
  }
}

void ByteLevelBpeTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                          std::to_string(vocab_size()) + ")");
}

const std::string& ByteLevelBpeTokenizer::id_to_piece(int32_t id) const {
  check_id(id);
  return model_.tokens[size_t(id)];
}

int32_t ByteLevelBpeTokenizer::piece_to_id(std::string_view piece) const {
  auto it = by_text_.find(std::string(piece));
  return it == by_text_.end() ? -1 : it->second;
}

PieceType ByteLevelBpeTokenizer::piece_type(int32_t id) const {
  check_id(id);
  return model_.types[size_t(id)];
}

const std::string& ByteLevelBpeTokenizer::surface(int32_t id) const {
  check_id(id);
  return surface_[size_t(id)];
}

int32_t ByteLevelBpeTokenizer::add_piece(const std::string& piece, PieceType type) {
  if (piece.empty()) throw InvalidArgument("add_piece: the piece is empty");
  if (type == PieceType::Byte || type == PieceType::Unknown)
    throw InvalidArgument("add_piece: cannot add an UNKNOWN or BYTE piece ('" + piece + "')");
  if (by_text_.count(piece))
    throw InvalidArgument("add_piece: '" + piece + "' is already piece " + std::to_string(by_text_.at(piece)));
  if (vocab_size() == std::numeric_limits<int32_t>::max()) throw InvalidArgument("add_piece: the vocabulary is full");
  const int32_t id = vocab_size();
  model_.tokens.push_back(piece);
  model_.types.push_back(type);
  by_text_.emplace(piece, id);
  // Never matched in text: only the vocabulary's own special tokens are.
  surface_.push_back(type == PieceType::Control ? std::string() : piece);
  return id;
}

void ByteLevelBpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (model_.ignore_merges) {
    auto it = by_bytes_.find(std::string(piece));
    if (it != by_bytes_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id;
    int32_t prev, next;
  };
  std::vector<Sym> sym;
  sym.reserve(piece.size());
  for (char c : piece) {
    const int32_t id = byte_ids_[uint8_t(c)];
    if (id < 0) {  // a vocabulary without this byte: unknown, or nothing
      if (model_.unk_id >= 0) sym.push_back({model_.unk_id, 0, 0});
      continue;
    }
    sym.push_back({id, 0, 0});
  }
  const int32_t n = static_cast<int32_t>(sym.size());
  for (int32_t i = 0; i < n; ++i) {
    sym[size_t(i)].prev = i - 1;
    sym[size_t(i)].next = i + 1 < n ? i + 1 : -1;
  }
  // Candidate merges, lowest rank first, then leftmost; stale ones are skipped.
  struct Cand {
    int32_t rank, left, left_id, right_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = sym[size_t(left)].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(sym[size_t(left)].id, sym[size_t(right)].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, sym[size_t(left)].id, sym[size_t(right)].id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> dead(size_t(n), false);
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& l = sym[size_t(c.left)];
    if (dead[size_t(c.left)] || l.next < 0 || l.id != c.left_id || sym[size_t(l.next)].id != c.right_id) continue;
    const int32_t right = l.next;
    l.id = merges_.at(pair_key(c.left_id, c.right_id)).id;
    dead[size_t(right)] = true;
    l.next = sym[size_t(right)].next;
    if (l.next >= 0) sym[size_t(l.next)].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i < n; ++i)
    if (!dead[size_t(i)]) ids.push_back(sym[size_t(i)].id);
}

void ByteLevelBpeTokenizer::encode_text(std::string_view text, std::string_view match, std::vector<int32_t>& ids) const {
  // `match` is `text` with the same length, valid for the regexes (sanitize_utf8)
  for (std::string_view piece : pre_.split(match))
    encode_piece(text.substr(static_cast<size_t>(piece.data() - match.data()), piece.size()), ids);
}

std::vector<int32_t> ByteLevelBpeTokenizer::encode(std::string_view raw, bool add_bos, bool add_eos) const {
  const Sanitized clean = sanitize_utf8(raw);
  const std::string& text = clean.bytes;
  const std::string_view match = clean.match_text();
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos && model_.bos_id >= 0) ids.push_back(model_.bos_id);
  // The vocabulary's special tokens, leftmost first, the longest at a position.
  size_t start = 0, pos = 0;
  while (pos < text.size()) {
    int32_t found = -1;
    if (special_first_[uint8_t(text[pos])]) {
      for (int32_t id : specials_) {
        const std::string& t = model_.tokens[size_t(id)];
        if (text.compare(pos, t.size(), t) == 0) {
          found = id;
          break;
        }
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    encode_text(std::string_view(text).substr(start, pos - start), match.substr(start, pos - start), ids);
    ids.push_back(found);
    pos += model_.tokens[size_t(found)].size();
    start = pos;
  }
  encode_text(std::string_view(text).substr(start), match.substr(start), ids);
  if (add_eos && model_.eos_id >= 0) ids.push_back(model_.eos_id);
  return ids;
}

std::string ByteLevelBpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids) check_id(id);  // nothing decoded if any id is bad
  BpeDecoder d(*this);
  std::string out;
  for (int32_t id : ids) out += d.put(id);
  return out + d.flush();
}

std::unique_ptr<detail::DecoderState> ByteLevelBpeTokenizer::decoder() const {
  return std::make_unique<BpeDecoder>(*this);
}

}  // namespace flashback
