// Llama SentencePiece tokenizer (BPE with byte fallback), native: no
// libsentencepiece (whose bundled protobuf crashes next to libtorch's).
//
//   tokenizer.model (protobuf ModelProto) ─┐
//   llama2.c tokenizer.bin ────────────────┼─▶ SentencePieceModel ─▶ Tokenizer
//   GGUF tokenizer.ggml.* (see gguf.hpp) ──┘
//
// Encoding follows sentencepiece's bpe_model.cc exactly: normalise (identity
// rule, optional whitespace cleanup, ' ' -> U+2581, dummy prefix), split into
// characters (user-defined pieces kept whole), repeatedly merge the adjacent
// pair whose concatenation is a vocabulary piece with the highest score
// (leftmost on ties), then map pieces to ids with byte fallback.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flashback {

// sentencepiece's ModelProto.SentencePiece.Type values.
enum class PieceType : int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

// Everything needed to tokenize, independent of the file it came from.
struct SentencePieceModel {
  struct Piece {
    std::string piece;
    float score = 0.0f;
    PieceType type = PieceType::Normal;
  };
  std::vector<Piece> pieces;

  // TrainerSpec
  int32_t model_type = 2;  // 1 unigram, 2 bpe, 3 word, 4 char (only bpe is supported)
  int32_t unk_id = 0;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t pad_id = -1;
  bool byte_fallback = true;
  std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "

  // NormalizerSpec
  std::string normalizer_name = "identity";
  std::string precompiled_charsmap;  // must be empty (identity rule)
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  bool escape_whitespaces = true;
};

// Parses a serialized sentencepiece ModelProto (the bytes of tokenizer.model).
// Throws FormatError naming `path` on malformed input.
SentencePieceModel parse_sentencepiece_model(std::string_view bytes, const std::string& path);
// Serializes to a ModelProto that the real sentencepiece library loads.
std::string serialize_sentencepiece_model(const SentencePieceModel& model);
// Reads a llama2.c tokenizer.bin. The format stores no piece types or
// normalizer flags: ids 0/1/2 are unk/bos/eos, "<0xXX>" pieces are bytes,
// and whitespace is kept as llama2.c's encoder does (no extra-space removal).
SentencePieceModel read_llama2c_tokenizer(const std::string& path);
// The same from bytes already in memory; FormatError names `path`.
SentencePieceModel parse_llama2c_tokenizer(std::string_view bytes, const std::string& path);

namespace detail {
// Open-addressing hash set of piece ids keyed by the piece text. It stores ids
// only (the text stays in SentencePieceModel::pieces), so copying or moving a
// Tokenizer never leaves dangling keys, and lookups take a string_view
// without building a std::string.
class PieceIndex {
 public:
  void clear() { slots_.clear(); size_ = 0; }
  // Returns the id already holding `pieces[id].piece`, or -1 after inserting.
  int32_t insert(int32_t id, const std::vector<SentencePieceModel::Piece>& pieces);
  int32_t find(std::string_view piece, const std::vector<SentencePieceModel::Piece>& pieces) const;

 private:
  struct Slot {
    int32_t id = -1;   // -1 = empty
    uint32_t tag = 0;  // high hash bits: most mismatches never touch the text
  };
  void grow(const std::vector<SentencePieceModel::Piece>& pieces);
  std::vector<Slot> slots_;  // size is a power of two
  size_t size_ = 0;
};
}  // namespace detail

class Tokenizer {
 public:
  Tokenizer() = default;
  // Validates the model (BPE, identity normaliser, ids in range, byte pieces
  // present when byte_fallback is set); throws FormatError naming `source`.
  explicit Tokenizer(SentencePieceModel model, std::string source = "<memory>");

  // Loads a tokenizer.model (protobuf) or a llama2.c tokenizer.bin; the format
  // is detected from the content, not the extension.
  static Tokenizer from_file(const std::string& path);

  // sentencepiece's encode(text): no BOS/EOS unless asked.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const;
  // sentencepiece's decode(ids): control ids vanish, byte pieces are joined
  // into UTF-8 (invalid bytes become U+FFFD), unknown ids print unk_surface.
  // Throws InvalidArgument for an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(model_.pieces.size()); }
  int32_t bos_id() const { return model_.bos_id; }
  int32_t eos_id() const { return model_.eos_id; }
  int32_t unk_id() const { return model_.unk_id; }
  int32_t pad_id() const { return model_.pad_id; }
  const std::string& id_to_piece(int32_t id) const;
  // -1 when absent.
  int32_t piece_to_id(std::string_view piece) const;
  PieceType piece_type(int32_t id) const;
  // Appends a piece (e.g. a marking token) as the next id; returns that id.
  int32_t add_piece(const std::string& piece, PieceType type);

  const SentencePieceModel& model() const { return model_; }

 private:
  friend class DecodeStream;

  void validate() const;
  void build_index();
  void index_piece(int32_t id);
  // The longest user-defined piece at the start of `text`; 0 if none.
  size_t match_user_defined(std::string_view text) const;
  std::string normalize(std::string_view text) const;
  struct BpeWorkspace;  // scratch buffers reused across segments
  // BPE over one normalized string, appending ids (bpe_model.cc's Encode plus
  // the processor's byte fallback / unknown merging).
  void encode_normalized(std::string_view normalized, std::vector<int32_t>& ids) const;
  void encode_segment(std::string_view segment, BpeWorkspace& ws, std::vector<int32_t>& ids) const;
  // sentencepiece's id lookup: reserved pieces first, then the rest, else unk.
  int32_t lookup_symbol(std::string_view piece) const;
  // The surface of one non-byte piece, and whether it consumed the leading
  // U+2581 of the text (sentencepiece's DecodeSentencePiece).
  std::pair<std::string, bool> decode_piece(int32_t id, bool is_bos_ws) const;
  void check_id(int32_t id) const;

  SentencePieceModel model_;
  std::string source_;
  detail::PieceIndex pieces_;             // Normal, UserDefined, Unused
  detail::PieceIndex reserved_;           // Control, Unknown, Byte
  std::vector<int32_t> user_defined_;     // UserDefined ids, longest piece first
  bool user_first_byte_[256] = {};        // first bytes of user-defined pieces
  bool has_unused_ = false;               // Unused pieces need resegmentation
  bool hard_boundary_[256] = {};          // ASCII bytes no multi-character piece contains
  int32_t byte_ids_[256] = {};            // <0xXX> ids (byte_fallback)
};

// Incremental detokenizer for streaming generation: feed ids one at a time,
// receive the newly completed UTF-8 text (multi-byte characters split across
// byte pieces are held back until complete).
class DecodeStream {
 public:
  explicit DecodeStream(const Tokenizer& tok) : tok_(&tok) {}
  // Feeds ids whose text the caller already shows (a prompt), so that what
  // follows decodes as a continuation (keeping its leading space).
  void skip(const std::vector<int32_t>& ids) {
    for (int32_t id : ids) put(id);
  }
  std::string put(int32_t id);
  std::string flush();

 private:
  friend class Tokenizer;  // decode() runs the same state machine
  void put_into(int32_t id, std::string& out);
  // Appends the characters completed by the pending byte pieces; with
  // `final`, an incomplete tail becomes U+FFFD per byte, as decode() does.
  void drain_bytes(std::string& out, bool final);

  const Tokenizer* tok_;
  std::string pending_;       // bytes of trailing <0xXX> pieces not yet emitted
  bool emitted_any_ = false;  // sentencepiece's "!text.empty()"
  bool is_bos_ws_ = true;     // the next piece may still drop a leading U+2581
  bool bos_ws_seen_ = false;  // the previous piece dropped one
};

}  // namespace flashback
