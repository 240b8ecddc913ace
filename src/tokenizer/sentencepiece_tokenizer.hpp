// Internal to src/tokenizer: sentencepiece's BPE behind the Tokenizer facade.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flashback/tokenizer.hpp"

namespace flashback {

// sentencepiece's BPE (the Llama-2 family) behind detail::TokenizerImpl.
class SentencePieceTokenizer : public detail::TokenizerImpl {
 public:
  // Validates the model (BPE, identity normaliser, ids in range, byte pieces
  // present when byte_fallback is set); throws FormatError naming `source`.
  SentencePieceTokenizer(SentencePieceModel model, std::string source);

  std::unique_ptr<detail::TokenizerImpl> clone() const override {
    return std::make_unique<SentencePieceTokenizer>(*this);
  }
  // sentencepiece's encode(text): no BOS/EOS unless asked.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool add_eos) const override;
  // sentencepiece's decode(ids): control ids vanish, byte pieces are joined
  // into UTF-8 (invalid bytes become U+FFFD), unknown ids print unk_surface.
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::unique_ptr<detail::DecoderState> decoder() const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(model_.pieces.size()); }
  int32_t bos_id() const override { return model_.bos_id; }
  int32_t eos_id() const override { return model_.eos_id; }
  int32_t unk_id() const override { return model_.unk_id; }
  int32_t pad_id() const override { return model_.pad_id; }
  bool adds_bos() const override { return model_.bos_id >= 0; }  // Llama-2's tokenizers all do
  const std::string& id_to_piece(int32_t id) const override;
  int32_t piece_to_id(std::string_view piece) const override;
  PieceType piece_type(int32_t id) const override;
  int32_t add_piece(const std::string& piece, PieceType type) override;
  const SentencePieceModel* sentencepiece_model() const override { return &model_; }

 private:
  friend class SentencePieceDecoder;

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

// Mirrors the loop of sentencepiece's Decode; decode() runs it too.
class SentencePieceDecoder : public detail::DecoderState {
 public:
  explicit SentencePieceDecoder(const SentencePieceTokenizer& tok) : tok_(&tok) {}
  std::string put(int32_t id) override {
    std::string out;
    put_into(id, out);
    return out;
  }
  std::string flush() override {
    std::string out;
    drain_bytes(out, true);
    return out;
  }
  void put_into(int32_t id, std::string& out);
  // Appends the characters completed by the pending byte pieces; with
  // `final`, an incomplete tail becomes U+FFFD per byte, as decode() does.
  void drain_bytes(std::string& out, bool final);

 private:
  const SentencePieceTokenizer* tok_;
  std::string pending_;       // bytes of trailing <0xXX> pieces not yet emitted
  bool emitted_any_ = false;  // sentencepiece's "!text.empty()"
  bool is_bos_ws_ = true;     // the next piece may still drop a leading U+2581
  bool bos_ws_seen_ = false;  // the previous piece dropped one
};

}  // namespace flashback
