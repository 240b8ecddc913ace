// llama2.c tokenizer.bin (karpathy/llama2.c tokenizer.py export):
//   int32 max_token_length
//   per token, until the end of the file: float32 score, int32 length, bytes
// All little-endian. The exporter wrote sentencepiece's pieces with U+2581
// turned back into ' ' and bos/eos as "\n<s>\n" / "\n</s>\n"; both are undone
// here so the vocabulary matches tokenizer.model piece for piece.
#include <cstring>
#include <string>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/tokenizer.hpp"
#include "text_internal.hpp"

namespace flashback {
namespace {

using internal::is_byte_piece;
using internal::kSpaceSymbol;

// Generous bound on the header value: real files say 7 (tok512) or 27 (Llama 2).
constexpr int32_t kMaxTokenLengthLimit = 1 << 16;

int32_t read_i32(std::string_view b, size_t pos) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(b[pos + i])) << (8 * i);
  return static_cast<int32_t>(v);
}

float read_f32(std::string_view b, size_t pos) {
  const uint32_t bits = static_cast<uint32_t>(read_i32(b, pos));
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string escape_spaces(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == ' ') {
      out.append(kSpaceSymbol);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// llama2.c's special pieces, padded with newlines by its exporter.
std::string special_piece(std::string_view s) {
  if (s.size() >= 2 && s.front() == '\n' && s.back() == '\n') return std::string(s.substr(1, s.size() - 2));
  return std::string(s);
}

[[noreturn]] void fail_format(const std::string& path, const std::string& problem) {
  throw FormatError(path, "malformed llama2.c tokenizer.bin: " + problem);
}

}  // namespace

SentencePieceModel parse_llama2c_tokenizer(std::string_view bytes, const std::string& path) {
  auto fail = [&path](const std::string& problem) { fail_format(path, problem); };
  if (bytes.size() < 4) fail("file is " + std::to_string(bytes.size()) + " bytes, too short for the header");
  const int32_t max_len = read_i32(bytes, 0);
  if (max_len <= 0 || max_len > kMaxTokenLengthLimit) {
    fail("max_token_length " + std::to_string(max_len) + " is out of range");
  }

  SentencePieceModel m;
  m.model_type = 2;
  m.unk_id = 0;
  m.bos_id = 1;
  m.eos_id = 2;
  m.pad_id = -1;
  m.byte_fallback = false;  // set below if byte pieces are present
  m.normalizer_name = "identity";
  m.add_dummy_prefix = true;
  m.remove_extra_whitespaces = false;  // llama2.c's encoder keeps every space
  m.escape_whitespaces = true;

  size_t pos = 4;
  while (pos < bytes.size()) {
    const size_t id = m.pieces.size();
    const std::string where = "token " + std::to_string(id) + " at byte " + std::to_string(pos);
    if (bytes.size() - pos < 8) fail(where + ": truncated score/length");
    const float score = read_f32(bytes, pos);
    const int32_t len = read_i32(bytes, pos + 4);
    pos += 8;
    if (len <= 0) fail(where + ": length " + std::to_string(len) + " is not positive");
    if (len > max_len) {
      fail(where + ": length " + std::to_string(len) + " exceeds max_token_length " + std::to_string(max_len));
    }
    if (static_cast<size_t>(len) > bytes.size() - pos) {
      fail(where + ": length " + std::to_string(len) + " runs past the end of the file");
    }
    const std::string_view raw = bytes.substr(pos, static_cast<size_t>(len));
    pos += static_cast<size_t>(len);

    SentencePieceModel::Piece p;
    p.score = score;
    if (id == 0) {
      p.type = PieceType::Unknown;
      p.piece = std::string(raw);
    } else if (id == 1 || id == 2) {
      p.type = PieceType::Control;
      p.piece = special_piece(raw);
    } else if (is_byte_piece(raw)) {
      p.type = PieceType::Byte;
      p.piece = std::string(raw);
      m.byte_fallback = true;
    } else {
      p.type = PieceType::Normal;
      p.piece = escape_spaces(raw);
    }
    m.pieces.push_back(std::move(p));
  }
  if (m.pieces.size() < 3) {
    fail("holds " + std::to_string(m.pieces.size()) + " tokens; unk, bos and eos (ids 0-2) are required");
  }
  return m;
}

SentencePieceModel read_llama2c_tokenizer(const std::string& path) {
  const auto file = MappedFile::open(path);
  return parse_llama2c_tokenizer(file->bytes(), path);
}

}  // namespace flashback
