// SentencePiece tokenizer.model (protobuf ModelProto: pieces, trainer and normalizer specs,
// unknown fields); what parses must serialize and parse back the same, and its tokenizer runs.
#include <cstring>

#include "flashback/tokenizer.hpp"
#include "harness.hpp"
#include "tokenizer_checks.hpp"

using namespace flashback;

namespace {
bool same(const SentencePieceModel& a, const SentencePieceModel& b) {
  if (a.pieces.size() != b.pieces.size()) return false;
  for (size_t i = 0; i < a.pieces.size(); ++i) {
    const auto &p = a.pieces[i], &q = b.pieces[i];
    // NaN scores compare by their bits
    if (p.piece != q.piece || p.type != q.type || std::memcmp(&p.score, &q.score, sizeof p.score) != 0) return false;
  }
  return a.model_type == b.model_type && a.unk_id == b.unk_id && a.bos_id == b.bos_id && a.eos_id == b.eos_id &&
         a.pad_id == b.pad_id && a.byte_fallback == b.byte_fallback && a.unk_surface == b.unk_surface &&
         a.normalizer_name == b.normalizer_name && a.precompiled_charsmap == b.precompiled_charsmap &&
         a.add_dummy_prefix == b.add_dummy_prefix && a.remove_extra_whitespaces == b.remove_extra_whitespaces &&
         a.escape_whitespaces == b.escape_whitespaces;
}
}  // namespace

FLASHBACK_FUZZ_TARGET(sentencepiece_model) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const SentencePieceModel m = parse_sentencepiece_model(bytes, "tokenizer.model");
    FUZZ_CHECK(same(parse_sentencepiece_model(serialize_sentencepiece_model(m), "again.model"), m));
    const Tokenizer tok(m, "tokenizer.model");
    fuzz::check_tokenizer(tok, "Hello  world,\t\xC3\xBC\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC <s> 1234\n");
  });
}
