// Internal to src/tokenizer: byte-level BPE (GPT-2's scheme, as HF tokenizers
// and llama.cpp run it) behind the Tokenizer facade.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "flashback/tokenizer.hpp"
#include "pre_tokenizer.hpp"

namespace flashback {

namespace internal {
// GPT-2's bytes_to_unicode: byte b -> a printable code point, UTF-8 encoded.
const std::string& byte_to_unicode(uint8_t b);
// The inverse over a token's text; false when a character is not in the map.
bool unicode_to_bytes(std::string_view text, std::string* bytes);
}  // namespace internal

class ByteLevelBpeTokenizer : public detail::TokenizerImpl {
 public:
  // Validates the model (merges over known tokens, a pre-tokenizer flashback
  // knows, ids in range); FormatError naming `source`.
  ByteLevelBpeTokenizer(BpeModel model, std::string source);

  std::unique_ptr<detail::TokenizerImpl> clone() const override {
    return std::make_unique<ByteLevelBpeTokenizer>(*this);
  }
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool add_eos) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::unique_ptr<detail::DecoderState> decoder() const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(model_.tokens.size()); }
  int32_t bos_id() const override { return model_.bos_id; }
  int32_t eos_id() const override { return model_.eos_id; }
  int32_t unk_id() const override { return model_.unk_id; }
  int32_t pad_id() const override { return model_.pad_id; }
  bool adds_bos() const override { return model_.add_bos && model_.bos_id >= 0; }
  const std::string& id_to_piece(int32_t id) const override;
  int32_t piece_to_id(std::string_view piece) const override;
  PieceType piece_type(int32_t id) const override;
  int32_t add_piece(const std::string& piece, PieceType type) override;
  const BpeModel* bpe_model() const override { return &model_; }

  // The bytes `id` stands for in decoded text (empty for a control token).
  const std::string& surface(int32_t id) const;

 private:
  void check_id(int32_t id) const;
  // BPE over the bytes of one pre-tokenized piece, appending ids.
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  // Appends the ids of text without special tokens.
  void encode_text(std::string_view text, std::string_view match, std::vector<int32_t>& ids) const;

  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  BpeModel model_;
  std::string source_;
  internal::PreTokenizer pre_;
  std::unordered_map<std::string, int32_t> by_text_;   // token text (file alphabet) -> id
  std::unordered_map<std::string, int32_t> by_bytes_;  // normal tokens' bytes -> id (ignore_merges)
  std::unordered_map<uint64_t, Merge> merges_;         // (left id, right id) -> rank, merged id
  std::vector<std::string> surface_;                   // per id: the bytes it decodes to
  std::vector<int32_t> specials_;                      // matched in text, longest first
  bool special_first_[256] = {};                       // first bytes of the special tokens
  int32_t byte_ids_[256];                              // the single-byte tokens
};

}  // namespace flashback
