// Tokenizers: one interface, two families.
//
//   SentencePiece BPE (Llama-2): native, no libsentencepiece (whose bundled
//   protobuf crashes next to libtorch's).
//     tokenizer.model (protobuf ModelProto) ─┐
//     llama2.c tokenizer.bin ────────────────┼─▶ SentencePieceModel ─┐
//     GGUF tokenizer.ggml.model = "llama" ───┘                       │
//                                                                    ├─▶ Tokenizer
//   Byte-level BPE (GPT-2, Llama-3, SmolLM):                         │
//     HF tokenizer.json (BPE + ByteLevel) ───┐                       │
//     GGUF tokenizer.ggml.model = "gpt2" ────┴─▶ BpeModel ───────────┘
//
// SentencePiece encoding follows sentencepiece's bpe_model.cc exactly:
// normalise (identity rule, optional whitespace cleanup, ' ' -> U+2581, dummy
// prefix), split into characters (user-defined pieces kept whole), repeatedly
// merge the adjacent pair whose concatenation is a vocabulary piece with the
// highest score (leftmost on ties), then map pieces to ids with byte fallback.
// Byte-level BPE follows HF tokenizers and llama.cpp (see BpeModel).
#pragma once

#include <cstdint>
#include <memory>
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

// A byte-level BPE vocabulary, as GPT-2 defined it and HF tokenizers and
// llama.cpp run it: the vocabulary's own special tokens (Control,
// UserDefined) are matched in the text first; the rest is split by the
// pre-tokenizer's regexes (`pre`, llama.cpp's names: "gpt2", "smollm",
// "llama3"), each piece's bytes are written in GPT-2's printable alphabet
// (byte -> code point), and the adjacent pair with the lowest merge rank is
// merged until none is left (leftmost on ties).
struct BpeModel {
  std::vector<std::string> tokens;  // in the byte-level alphabet (special tokens as they are)
  std::vector<PieceType> types;     // Normal, Control (special), UserDefined, Unused, ...
  std::vector<std::pair<std::string, std::string>> merges;  // by rank
  std::string pre = "gpt2";
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;        // encode's default (llama.cpp's tokenizer.ggml.add_bos_token)
  bool add_eos = false;
  bool ignore_merges = false;  // a whole piece that is a token is taken as it is (Llama-3)
};

// The pre-tokenizer names BpeModel::pre accepts.
const std::vector<std::string>& bpe_pre_tokenizers();
// Reads an HF tokenizer.json with a BPE model and a ByteLevel pre-tokenizer
// (alone, after Digits, or after a Split of a known pattern). FormatError
// naming `path` for anything else.
BpeModel read_tokenizer_json(const std::string& path);
BpeModel parse_tokenizer_json(std::string_view text, const std::string& path);
// The tokenizer.json (HF tokenizers' format) that reproduces `model`.
std::string write_tokenizer_json(const BpeModel& model);

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
// What a tokenizer family implements; Tokenizer and DecodeStream forward here.
class DecoderState {
 public:
  virtual ~DecoderState() = default;
  // The text completed by `id` (held back while a character is incomplete).
  virtual std::string put(int32_t id) = 0;
  // What is still held, an incomplete character as U+FFFD.
  virtual std::string flush() = 0;
};

class TokenizerImpl {
 public:
  virtual ~TokenizerImpl() = default;
  virtual std::unique_ptr<TokenizerImpl> clone() const = 0;
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos, bool add_eos) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual std::unique_ptr<DecoderState> decoder() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;
  virtual int32_t pad_id() const = 0;
  virtual bool adds_bos() const = 0;
  virtual const std::string& id_to_piece(int32_t id) const = 0;
  virtual int32_t piece_to_id(std::string_view piece) const = 0;
  virtual PieceType piece_type(int32_t id) const = 0;
  virtual int32_t add_piece(const std::string& piece, PieceType type) = 0;
  virtual const SentencePieceModel* sentencepiece_model() const { return nullptr; }
  virtual const BpeModel* bpe_model() const { return nullptr; }
};

}  // namespace detail

enum class TokenizerFamily { SentencePiece, ByteLevelBpe };

// A tokenizer of either family. Copies share the vocabulary until one of
// them changes it (add_piece). Thread-safe for concurrent const use.
class Tokenizer {
 public:
  Tokenizer() = default;  // no vocabulary: encode/decode throw
  // Validate the model; FormatError naming `source`.
  explicit Tokenizer(SentencePieceModel model, std::string source = "<memory>");
  explicit Tokenizer(BpeModel model, std::string source = "<memory>");

  // Loads a tokenizer.model (protobuf), a llama2.c tokenizer.bin, an HF
  // tokenizer.json or the tokenizer inside a GGUF model file; the format is
  // detected from the content, not the name.
  static Tokenizer from_file(const std::string& path);

  // The ids of `text`, with BOS/EOS only as asked. SentencePiece:
  // sentencepiece's encode; byte-level BPE: HF tokenizers' / llama.cpp's.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const;
  // The ids of `text` as a sequence starts: with the special tokens the
  // tokenizer adds by default (Llama-2: BOS; SmolLM2: none), as HF's
  // add_special_tokens=True. What a prompt or a text to score is encoded as.
  std::vector<int32_t> encode_with_specials(std::string_view text) const { return encode(text, adds_bos(), false); }
  // Text of `ids`: control ids vanish, bytes are joined into UTF-8 (invalid
  // bytes become U+FFFD). InvalidArgument for an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;

  TokenizerFamily family() const;
  int32_t vocab_size() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t pad_id() const;
  // Whether encode(text) starts with BOS.
  bool adds_bos() const;
  const std::string& id_to_piece(int32_t id) const;
  // -1 when absent.
  int32_t piece_to_id(std::string_view piece) const;
  PieceType piece_type(int32_t id) const;
  // Appends a piece (e.g. a marking token) as the next id; returns that id.
  // A Control piece added here is never matched in text.
  int32_t add_piece(const std::string& piece, PieceType type);

  // The vocabulary, for writers (InvalidArgument for the other family).
  const SentencePieceModel& model() const;
  const BpeModel& bpe_model() const;

 private:
  friend class DecodeStream;
  const detail::TokenizerImpl& impl() const;
  std::shared_ptr<detail::TokenizerImpl> impl_;
};

// Incremental detokenizer for streaming generation: feed ids one at a time,
// receive the newly completed UTF-8 text (multi-byte characters split across
// byte pieces are held back until complete).
class DecodeStream {
 public:
  explicit DecodeStream(const Tokenizer& tok);
  // Feeds ids whose text the caller already shows (a prompt), so that what
  // follows decodes as a continuation (keeping its leading space).
  void skip(const std::vector<int32_t>& ids) {
    for (int32_t id : ids) put(id);
  }
  std::string put(int32_t id) { return state_->put(id); }
  std::string flush() { return state_->flush(); }

 private:
  std::shared_ptr<const detail::TokenizerImpl> tok_;  // keeps the vocabulary alive
  std::unique_ptr<detail::DecoderState> state_;
};

}  // namespace flashback
