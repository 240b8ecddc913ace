// SentencePieceTokenizer: sentencepiece 0.1.97's BPE encode/decode, reimplemented.
//
// The reference behaviour (normalizer.cc, bpe_model.cc, model_interface.cc,
// sentencepiece_processor.cc) is mirrored step by step, including its quirks:
// user-defined pieces are matched whole before normalisation, malformed UTF-8
// becomes U+FFFD one byte at a time, Unused pieces are merged into and then
// split back ("resegmented"), unknown symbols become <0xXX> byte pieces or
// one merged unk, and decode drops the dummy-prefix space of the first piece.
#include "sentencepiece_tokenizer.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <unordered_map>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "text_internal.hpp"
#include "flashback/strings.hpp"

namespace flashback {
namespace {

using internal::byte_piece_value;
using internal::incomplete_utf8;
using internal::kReplacementChar;
using internal::kSpaceSymbol;
using internal::one_char_len;
using internal::valid_utf8_prefix;

bool is_reserved(PieceType t) { return t == PieceType::Control || t == PieceType::Unknown || t == PieceType::Byte; }

const char* model_type_name(int32_t t) {
  switch (t) {
    case 1: return "unigram";
    case 2: return "bpe";
    case 3: return "word";
    case 4: return "char";
    default: return "unknown";
  }
}

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

constexpr const char* kOnlyBpe = "only BPE models with the identity normalizer are supported";

}  // namespace

// ---- construction and validation

SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceModel model, std::string source)
    : model_(std::move(model)), source_(std::move(source)) {
  validate();
  build_index();
}

void SentencePieceTokenizer::validate() const {
  const auto& m = model_;
  if (m.model_type != 2) {
    throw FormatError(source_, std::string("model type ") + model_type_name(m.model_type) + " (" +
                                   std::to_string(m.model_type) + ") is not supported: " + kOnlyBpe);
  }
  if (!m.precompiled_charsmap.empty()) {
    throw FormatError(source_, "normalizer " + quoted(m.normalizer_name) + " (a " +
                                   std::to_string(m.precompiled_charsmap.size()) +
                                   "-byte precompiled_charsmap) is not supported: " + kOnlyBpe);
  }
  if (m.pieces.empty()) throw FormatError(source_, "the vocabulary is empty");
  if (m.pieces.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw FormatError(source_, "the vocabulary has more than 2^31-1 pieces");
  }
  const auto n = static_cast<int32_t>(m.pieces.size());
  auto check_range = [&](const char* name, int32_t id, bool optional) {
    if ((optional && id == -1) || (id >= 0 && id < n)) return;
    throw FormatError(source_, std::string(name) + " " + std::to_string(id) + " is outside the vocabulary of " +
                                   std::to_string(n) + " pieces");
  };
  check_range("unk_id", m.unk_id, false);
  check_range("bos_id", m.bos_id, true);
  check_range("eos_id", m.eos_id, true);
  check_range("pad_id", m.pad_id, true);
  const auto unknowns = std::count_if(m.pieces.begin(), m.pieces.end(),
                                      [](const auto& p) { return p.type == PieceType::Unknown; });
  if (m.pieces[static_cast<size_t>(m.unk_id)].type != PieceType::Unknown || unknowns != 1) {
    throw FormatError(source_, "expected exactly one piece of type UNKNOWN, at unk_id " + std::to_string(m.unk_id) +
                                   " (found " + std::to_string(unknowns) + ")");
  }
}

void SentencePieceTokenizer::build_index() {
  pieces_.clear();
  reserved_.clear();
  user_defined_.clear();
  std::fill(std::begin(user_first_byte_), std::end(user_first_byte_), false);
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  has_unused_ = false;
  for (int b = 0; b < 256; ++b) hard_boundary_[b] = b < 0x80;
  for (size_t id = 0; id < model_.pieces.size(); ++id) index_piece(static_cast<int32_t>(id));
  if (model_.byte_fallback) {
    const auto missing = std::count(std::begin(byte_ids_), std::end(byte_ids_), -1);
    if (missing > 0) {
      throw FormatError(source_, "byte_fallback is set but " + std::to_string(missing) +
                                     " of the 256 <0xXX> byte pieces are missing");
    }
  }
}

void SentencePieceTokenizer::index_piece(int32_t id) {
  const auto& p = model_.pieces[static_cast<size_t>(id)];
  auto where = [&] { return "piece " + std::to_string(id) + " " + quoted(p.piece); };
  if (p.piece.empty()) throw FormatError(source_, "piece " + std::to_string(id) + " is empty");
  const int32_t other = (is_reserved(p.type) ? reserved_ : pieces_).insert(id, model_.pieces);
  if (other >= 0) throw FormatError(source_, where() + " is already defined as piece " + std::to_string(other));

  if (!is_reserved(p.type) && p.piece.size() > 1) {
    for (char c : p.piece) hard_boundary_[static_cast<uint8_t>(c)] = false;
  }
  if (p.type == PieceType::UserDefined) {
    // Longest first, so the first match in match_user_defined is the longest.
    const auto pos = std::find_if(user_defined_.begin(), user_defined_.end(), [&](int32_t u) {
      return model_.pieces[static_cast<size_t>(u)].piece.size() < p.piece.size();
    });
    user_defined_.insert(pos, id);
    user_first_byte_[static_cast<uint8_t>(p.piece[0])] = true;
  } else if (p.type == PieceType::Unused) {
    has_unused_ = true;
  } else if (p.type == PieceType::Byte) {
    const int b = byte_piece_value(p.piece);
    if (b < 0) throw FormatError(source_, where() + " has type BYTE but is not of the form <0xXX>");
    if (!model_.byte_fallback) throw FormatError(source_, where() + " is a byte piece although byte_fallback is off");
    byte_ids_[b] = id;
  }
}

// ---- lookups

void SentencePieceTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                          std::to_string(vocab_size()) + ")");
  }
}

const std::string& SentencePieceTokenizer::id_to_piece(int32_t id) const {
  check_id(id);
  return model_.pieces[static_cast<size_t>(id)].piece;
}

int32_t SentencePieceTokenizer::piece_to_id(std::string_view piece) const {
  const int32_t id = reserved_.find(piece, model_.pieces);
  return id >= 0 ? id : pieces_.find(piece, model_.pieces);
}

PieceType SentencePieceTokenizer::piece_type(int32_t id) const {
  check_id(id);
  return model_.pieces[static_cast<size_t>(id)].type;
}

int32_t SentencePieceTokenizer::lookup_symbol(std::string_view piece) const {
  const int32_t id = piece_to_id(piece);
  return id >= 0 ? id : model_.unk_id;
}

int32_t SentencePieceTokenizer::add_piece(const std::string& piece, PieceType type) {
  if (type == PieceType::Unknown || type == PieceType::Byte) {
    throw InvalidArgument("add_piece: cannot add an UNKNOWN or BYTE piece (" + quoted(piece) + ")");
  }
  if (piece.empty()) throw InvalidArgument("add_piece: the piece is empty");
  if (model_.pieces.empty()) throw InvalidArgument("add_piece: the tokenizer has no vocabulary");
  if (vocab_size() == std::numeric_limits<int32_t>::max()) throw InvalidArgument("add_piece: the vocabulary is full");
  const int32_t existing = (is_reserved(type) ? reserved_ : pieces_).find(piece, model_.pieces);
  if (existing >= 0) {
    throw InvalidArgument("add_piece: " + quoted(piece) + " is already piece " + std::to_string(existing));
  }
  model_.pieces.push_back({piece, 0.0f, type});
  const int32_t id = vocab_size() - 1;
  index_piece(id);
  return id;
}

size_t SentencePieceTokenizer::match_user_defined(std::string_view text) const {
  if (user_defined_.empty() || text.empty() || !user_first_byte_[static_cast<uint8_t>(text[0])]) return 0;
  for (int32_t id : user_defined_) {
    const std::string& p = model_.pieces[static_cast<size_t>(id)].piece;
    if (starts_with(text, p)) return p.size();
  }
  return 0;
}

// ---- encoding

// normalizer.cc's Normalize with the identity rule: user-defined pieces kept
// verbatim, malformed UTF-8 -> U+FFFD (one byte at a time), optional
// whitespace cleanup, ' ' -> U+2581, dummy prefix.
std::string SentencePieceTokenizer::normalize(std::string_view input) const {
  std::string out;
  const bool collapse = model_.remove_extra_whitespaces;
  const bool escape = model_.escape_whitespaces;
  auto next_unit = [this](std::string_view in) -> std::pair<std::string_view, size_t> {
    if (const size_t n = match_user_defined(in)) return {in.substr(0, n), n};
    if (const size_t n = valid_utf8_prefix(in)) return {in.substr(0, n), n};
    return {kReplacementChar, 1};
  };

  if (collapse) {  // leading spaces
    while (!input.empty() && next_unit(input).first == " ") input.remove_prefix(1);
  }
  if (input.empty()) return out;

  out.reserve(input.size() + input.size() / 4 + 8);
  auto append = [&](std::string_view unit) {
    for (char c : unit) {
      if (escape && c == ' ') {
        out.append(kSpaceSymbol);
      } else {
        out.push_back(c);
      }
    }
  };
  if (model_.add_dummy_prefix) append(" ");

  bool prev_space = collapse;
  while (!input.empty()) {
    auto [unit, consumed] = next_unit(input);
    while (prev_space && !unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
    if (!unit.empty()) {
      append(unit);
      prev_space = unit.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!collapse) prev_space = false;
  }

  if (collapse) {  // trailing spaces (and trailing literal U+2581s, as sentencepiece does)
    const std::string_view space = escape ? kSpaceSymbol : std::string_view(" ");
    while (ends_with(out, space)) {
      out.resize(out.size() - space.size());
    }
  }
  return out;
}

struct SentencePieceTokenizer::BpeWorkspace {
  struct Symbol {
    int32_t prev, next;
    uint32_t begin, len;  // bytes of the segment; len 0 once merged into its left neighbour
    bool frozen;          // a user-defined piece: never merged
  };
  struct Candidate {
    float score;
    int32_t left, right;
    uint32_t len;  // length of the merged piece, to recognise stale entries
  };
  struct Worse {  // heap order: best score first, leftmost on ties
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  std::vector<Symbol> symbols;
  std::vector<Candidate> agenda;  // a max-heap under `worse`
  // Unused pieces: merged piece -> the two symbols it was made from (the last
  // pair seen wins, as in sentencepiece), to split them again at the end.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  bool prev_unknown = false;  // for merging runs of unknowns into one unk id
};

// Merges never cross a byte that no multi-character piece contains (e.g.
// '\n' or, for Llama, digits), so the text is cut there and each part gets
// its own small heap: the same result, much faster on whole documents.
// Unused pieces disable the cut, as their resegmentation table is shared by
// the whole text.
void SentencePieceTokenizer::encode_normalized(std::string_view norm, std::vector<int32_t>& ids) const {
  BpeWorkspace ws;
  if (has_unused_) {
    encode_segment(norm, ws, ids);
    return;
  }
  size_t start = 0;
  for (size_t i = 0; i < norm.size(); ++i) {
    if (hard_boundary_[static_cast<uint8_t>(norm[i])]) {
      if (i > start) encode_segment(norm.substr(start, i - start), ws, ids);
      encode_segment(norm.substr(i, 1), ws, ids);
      start = i + 1;
    }
  }
  if (start < norm.size()) encode_segment(norm.substr(start), ws, ids);
}

// bpe_model.cc: split into characters (user-defined pieces whole and frozen),
// then repeatedly merge the adjacent pair whose concatenation is a piece with
// the best score (leftmost on ties), using a max-heap of candidate pairs over
// a doubly linked list of symbols; stale heap entries are skipped when popped.
void SentencePieceTokenizer::encode_segment(std::string_view seg, BpeWorkspace& ws, std::vector<int32_t>& ids) const {
  using Candidate = BpeWorkspace::Candidate;
  auto& sym = ws.symbols;
  auto& agenda = ws.agenda;
  sym.clear();
  agenda.clear();
  for (size_t pos = 0; pos < seg.size();) {
    size_t n = match_user_defined(seg.substr(pos));
    const bool frozen = n > 0;
    if (!frozen) n = std::min(one_char_len(seg[pos]), seg.size() - pos);
    const auto idx = static_cast<int32_t>(sym.size());
    sym.push_back({idx - 1, pos + n < seg.size() ? idx + 1 : -1, static_cast<uint32_t>(pos),
                   static_cast<uint32_t>(n), frozen});
    pos += n;
  }
  auto text = [&](const BpeWorkspace::Symbol& s) { return seg.substr(s.begin, s.len); };

  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[l].frozen || sym[r].frozen) return;
    const std::string_view merged = seg.substr(sym[l].begin, sym[l].len + sym[r].len);
    const int32_t id = pieces_.find(merged, model_.pieces);
    if (id < 0) return;
    const auto& piece = model_.pieces[static_cast<size_t>(id)];
    agenda.push_back({piece.score, l, r, static_cast<uint32_t>(merged.size())});
    std::push_heap(agenda.begin(), agenda.end(), BpeWorkspace::Worse{});
    if (piece.type == PieceType::Unused) ws.rev_merge[merged] = {text(sym[l]), text(sym[r])};
  };
  for (size_t i = 1; i < sym.size(); ++i) consider(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));

  while (!agenda.empty()) {
    std::pop_heap(agenda.begin(), agenda.end(), BpeWorkspace::Worse{});
    const Candidate top = agenda.back();
    agenda.pop_back();
    auto& left = sym[top.left];
    auto& right = sym[top.right];
    if (left.len == 0 || right.len == 0 || left.len + right.len != top.len) continue;  // stale
    left.len += right.len;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.left;
    right.len = 0;
    consider(left.prev, top.left);
    consider(top.left, left.next);
  }

  // sentencepiece_processor.cc: unknown symbols become byte pieces with
  // byte_fallback, else a run of them becomes a single unk id.
  auto emit = [&](std::string_view w) {
    const int32_t id = lookup_symbol(w);
    const bool unknown = model_.pieces[static_cast<size_t>(id)].type == PieceType::Unknown;
    if (unknown && model_.byte_fallback) {
      for (char c : w) ids.push_back(byte_ids_[static_cast<uint8_t>(c)]);
    } else if (!(unknown && ws.prev_unknown)) {
      ids.push_back(id);
    }
    ws.prev_unknown = unknown;
  };
  std::function<void(std::string_view)> resegment = [&](std::string_view w) {
    const int32_t id = lookup_symbol(w);
    if (model_.pieces[static_cast<size_t>(id)].type == PieceType::Unused) {
      const auto it = ws.rev_merge.find(w);
      if (it != ws.rev_merge.end()) {
        const auto halves = it->second;
        resegment(halves.first);
        resegment(halves.second);
        return;
      }
    }
    emit(w);
  };
  for (int32_t i = sym.empty() ? -1 : 0; i != -1; i = sym[i].next) {
    if (has_unused_) {
      resegment(text(sym[i]));
    } else {
      emit(text(sym[i]));
    }
  }
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text, bool add_bos, bool add_eos) const {
  if (model_.pieces.empty()) throw InvalidArgument("encode: the tokenizer has no vocabulary");
  // Symbol offsets are 32-bit, and normalizing can grow the text 3x (' ' -> U+2581).
  if (text.size() > std::numeric_limits<uint32_t>::max() / 4) {
    throw InvalidArgument("encode: text of " + std::to_string(text.size()) + " bytes is too long");
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos && model_.bos_id >= 0) ids.push_back(model_.bos_id);
  encode_normalized(normalize(text), ids);
  if (add_eos && model_.eos_id >= 0) ids.push_back(model_.eos_id);
  return ids;
}

// ---- decoding

std::pair<std::string, bool> SentencePieceTokenizer::decode_piece(int32_t id, bool is_bos_ws) const {
  const auto& p = model_.pieces[static_cast<size_t>(id)];
  if (p.type == PieceType::Control) return {std::string(), false};
  if (p.type == PieceType::Unknown) return {model_.unk_surface, false};

  std::string_view piece = p.piece;
  bool consumed_ws = false;
  // The dummy prefix added by encode: dropped from the first piece of the text.
  if (is_bos_ws && (model_.add_dummy_prefix || model_.remove_extra_whitespaces)) {
    if (piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      piece.remove_prefix(kSpaceSymbol.size());
      // With whitespace cleanup sentencepiece keeps dropping leading spaces
      // until some text appears.
      consumed_ws = !model_.remove_extra_whitespaces;
    }
  }
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out.push_back(' ');
      i += kSpaceSymbol.size();
    } else {
      out.push_back(piece[i++]);
    }
  }
  return {std::move(out), consumed_ws};
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids) check_id(id);  // nothing decoded if any id is bad
  SentencePieceDecoder stream(*this);
  std::string out;
  for (int32_t id : ids) stream.put_into(id, out);
  stream.drain_bytes(out, true);
  return out;
}

std::unique_ptr<detail::DecoderState> SentencePieceTokenizer::decoder() const {
  return std::make_unique<SentencePieceDecoder>(*this);
}

// Mirrors the loop of sentencepiece's Decode: byte pieces accumulate; before
// each other piece they are turned into text, then the piece may drop its
// leading U+2581 only while nothing has been output and no earlier piece
// dropped one.
void SentencePieceDecoder::put_into(int32_t id, std::string& out) {
  tok_->check_id(id);
  const auto& p = tok_->model_.pieces[static_cast<size_t>(id)];
  if (p.type == PieceType::Byte) {
    pending_.push_back(static_cast<char>(byte_piece_value(p.piece)));
    drain_bytes(out, false);
    return;
  }
  drain_bytes(out, true);
  if (bos_ws_seen_ || emitted_any_) is_bos_ws_ = false;
  auto [text, consumed_ws] = tok_->decode_piece(id, is_bos_ws_);
  bos_ws_seen_ = consumed_ws;
  if (!text.empty()) emitted_any_ = true;
  out += text;
}

void SentencePieceDecoder::drain_bytes(std::string& out, bool final) {
  size_t i = 0;
  while (i < pending_.size()) {
    const std::string_view rest(pending_.data() + i, pending_.size() - i);
    if (!final && incomplete_utf8(rest)) break;
    const size_t n = valid_utf8_prefix(rest);
    out.append(n > 0 ? rest.substr(0, n) : kReplacementChar);
    i += n > 0 ? n : 1;
  }
  if (i > 0) emitted_any_ = true;
  pending_.erase(0, i);
}

}  // namespace flashback
