// Tokenizer and DecodeStream: the one interface over both families.
#include "flashback/tokenizer.hpp"

#include <algorithm>

#include "bpe_tokenizer.hpp"
#include "flashback/error.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "sentencepiece_tokenizer.hpp"

namespace flashback {

Tokenizer::Tokenizer(SentencePieceModel model, std::string source)
    : impl_(std::make_shared<SentencePieceTokenizer>(std::move(model), std::move(source))) {}

Tokenizer::Tokenizer(BpeModel model, std::string source)
    : impl_(std::make_shared<ByteLevelBpeTokenizer>(std::move(model), std::move(source))) {}

Tokenizer Tokenizer::from_file(const std::string& path) {
  const auto file = MappedFile::open(path);
  const std::string_view bytes = file->bytes();

  // A GGUF model file carries its tokenizer.
  if (bytes.substr(0, 4) == "GGUF") return gguf_tokenizer(read_gguf(path));

  // An HF tokenizer.json is a JSON object.
  const size_t first_char = bytes.find_first_not_of(" \t\r\n");
  if (first_char != std::string_view::npos && bytes[first_char] == '{')
    return Tokenizer(parse_tokenizer_json(bytes, path), path);

  // A tokenizer.bin is a chain of length-prefixed records that ends exactly at
  // the end of the file; a ModelProto starts with the tag of one of its
  // length-delimited fields 1..5 (in practice 0x0A, the first piece).
  auto le32 = [&](size_t pos) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[pos + i])) << (8 * i);
    return static_cast<int32_t>(v);
  };
  auto chains_exactly = [&] {
    if (bytes.size() < 4) return false;
    size_t pos = 4;
    while (bytes.size() - pos >= 8) {
      const int32_t len = le32(pos + 4);
      pos += 8;
      if (len <= 0 || static_cast<size_t>(len) > bytes.size() - pos) return false;
      pos += static_cast<size_t>(len);
    }
    return pos == bytes.size();
  };
  const bool llama2c = chains_exactly();
  const auto first = bytes.empty() ? 0 : static_cast<uint8_t>(bytes[0]);
  const bool proto_tag = first == 0x0A || first == 0x12 || first == 0x1A || first == 0x22 || first == 0x2A;

  if (llama2c || !proto_tag) {
    try {
      return Tokenizer(parse_llama2c_tokenizer(bytes, path), path);
    } catch (const FormatError& e) {
      if (llama2c) throw;
      const std::string what = e.what();  // "<path>: <problem>"
      throw FormatError(path, "neither a sentencepiece tokenizer.model nor a llama2.c tokenizer.bin (as the latter: " +
                                  what.substr(std::min(what.size(), path.size() + 2)) + ")");
    }
  }
  return Tokenizer(parse_sentencepiece_model(bytes, path), path);
}

const detail::TokenizerImpl& Tokenizer::impl() const {
  if (!impl_) throw InvalidArgument("the tokenizer has no vocabulary");
  return *impl_;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool add_eos) const {
  return impl().encode(text, add_bos, add_eos);
}
std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return impl().decode(ids); }
TokenizerFamily Tokenizer::family() const {
  return impl().bpe_model() ? TokenizerFamily::ByteLevelBpe : TokenizerFamily::SentencePiece;
}
int32_t Tokenizer::vocab_size() const { return impl_ ? impl_->vocab_size() : 0; }
int32_t Tokenizer::bos_id() const { return impl().bos_id(); }
int32_t Tokenizer::eos_id() const { return impl().eos_id(); }
int32_t Tokenizer::unk_id() const { return impl().unk_id(); }
int32_t Tokenizer::pad_id() const { return impl().pad_id(); }
bool Tokenizer::adds_bos() const { return impl().adds_bos(); }
const std::string& Tokenizer::id_to_piece(int32_t id) const { return impl().id_to_piece(id); }
int32_t Tokenizer::piece_to_id(std::string_view piece) const { return impl().piece_to_id(piece); }
PieceType Tokenizer::piece_type(int32_t id) const { return impl().piece_type(id); }

int32_t Tokenizer::add_piece(const std::string& piece, PieceType type) {
  impl();
  if (impl_.use_count() > 1) impl_ = impl_->clone();  // copies share a vocabulary until one changes it
  return impl_->add_piece(piece, type);
}

const SentencePieceModel& Tokenizer::model() const {
  const SentencePieceModel* m = impl().sentencepiece_model();
  if (!m) throw InvalidArgument("not a SentencePiece tokenizer (a byte-level BPE one: see bpe_model())");
  return *m;
}

const BpeModel& Tokenizer::bpe_model() const {
  const BpeModel* m = impl().bpe_model();
  if (!m) throw InvalidArgument("not a byte-level BPE tokenizer (a SentencePiece one: see model())");
  return *m;
}

DecodeStream::DecodeStream(const Tokenizer& tok) : tok_(tok.impl_), state_(tok.impl().decoder()) {}

}  // namespace flashback
