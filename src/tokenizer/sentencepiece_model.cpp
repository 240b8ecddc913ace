// sentencepiece ModelProto <-> SentencePieceModel, with a hand-written
// protobuf wire-format reader/writer: linking libprotobuf (or libsentencepiece,
// which bundles one) next to LibTorch's protobuf is what we avoid.
//
// Schema (sentencepiece_model.proto, proto2) — only the fields we use:
//   ModelProto      1 pieces (repeated SentencePiece)  2 trainer_spec
//                   3 normalizer_spec                  5 denormalizer_spec
//   SentencePiece   1 piece  2 score (float)  3 type (enum, default NORMAL)
//   TrainerSpec     3 model_type (default UNIGRAM)  24 treat_whitespace_as_suffix
//                   35 byte_fallback (default false)  40..43 unk/bos/eos/pad_id
//                   44 unk_surface  45..48 unk/bos/eos/pad_piece
//   NormalizerSpec  1 name  2 precompiled_charsmap  3 add_dummy_prefix
//                   4 remove_extra_whitespaces  5 escape_whitespaces (all true)
// Every other field is skipped by wire type. proto2 defaults apply to absent
// fields, so the parser starts from them, not from SentencePieceModel's.
#include <cstring>
#include <string>

#include "flashback/error.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {
namespace {

enum WireType : int { Varint = 0, Fixed64 = 1, Len = 2, StartGroup = 3, EndGroup = 4, Fixed32 = 5 };

constexpr int kMaxGroupDepth = 64;

// Bounds-checked cursor over one message's bytes. Every read either succeeds
// inside the buffer or throws FormatError(path, "<what>: <problem>").
class WireReader {
 public:
  WireReader(std::string_view data, const std::string& path, std::string what)
      : data_(data), path_(path), what_(std::move(what)) {}

  bool done() const { return pos_ >= data_.size(); }

  // Reads the next tag; field numbers are 1..2^29-1.
  void tag(uint32_t& field, int& wire) {
    const uint64_t t = varint("field tag");
    field = static_cast<uint32_t>(t >> 3);
    wire = static_cast<int>(t & 7);
    if (field == 0 || t >> 32 != 0) fail("invalid field number in tag " + std::to_string(t));
  }

  uint64_t varint(const char* name) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail(std::string("truncated varint (") + name + ")");
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      if (shift == 63 && b > 1) fail(std::string("varint overflows 64 bits (") + name + ")");
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(std::string("varint longer than 10 bytes (") + name + ")");
  }

  std::string_view bytes(const char* name) {
    const uint64_t n = varint(name);
    if (n > data_.size() - pos_) {
      fail(std::string(name) + ": length " + std::to_string(n) + " runs past the end (" +
           std::to_string(data_.size() - pos_) + " bytes left)");
    }
    std::string_view out = data_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return out;
  }

  uint32_t fixed32(const char* name) {
    if (data_.size() - pos_ < 4) fail(std::string("truncated fixed32 (") + name + ")");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    pos_ += 4;
    return v;
  }

  // Skips the value of a field we do not read, whatever its wire type.
  void skip(uint32_t field, int wire, int depth = 0) {
    switch (wire) {
      case Varint: varint("unknown field"); return;
      case Fixed64:
        if (data_.size() - pos_ < 8) fail("truncated fixed64 field " + std::to_string(field));
        pos_ += 8;
        return;
      case Len: bytes("unknown field"); return;
      case Fixed32: fixed32("unknown field"); return;
      case StartGroup: skip_group(field, depth + 1); return;
      case EndGroup: fail("unmatched end-group tag for field " + std::to_string(field));
      default: fail("invalid wire type " + std::to_string(wire) + " for field " + std::to_string(field));
    }
  }

  // Throws unless a known field arrived with the wire type the schema implies.
  void expect(uint32_t field, int wire, int expected, const char* name) {
    if (wire != expected) {
      fail(std::string(name) + " (field " + std::to_string(field) + ") has wire type " +
           std::to_string(wire) + ", expected " + std::to_string(expected));
    }
  }

  [[noreturn]] void fail(const std::string& problem) const {
    throw FormatError(path_, "malformed sentencepiece model: " + what_ + " at byte " +
                                 std::to_string(pos_) + ": " + problem);
  }

 private:
  void skip_group(uint32_t group_field, int depth) {
    if (depth > kMaxGroupDepth) fail("groups nested too deeply");
    while (true) {
      if (done()) fail("unterminated group (field " + std::to_string(group_field) + ")");
      uint32_t field = 0;
      int wire = 0;
      tag(field, wire);
      if (wire == EndGroup) {
        if (field != group_field) fail("end-group tag for field " + std::to_string(field) +
                                       " closes group " + std::to_string(group_field));
        return;
      }
      skip(field, wire, depth);
    }
  }

  std::string_view data_;
  size_t pos_ = 0;
  const std::string& path_;
  std::string what_;
};

// proto2 int32 fields hold the low 32 bits of the varint (negatives are
// sign-extended to 10 bytes on the wire).
int32_t to_int32(uint64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }

float to_float(uint32_t bits) {
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

SentencePieceModel::Piece parse_piece(std::string_view msg, const std::string& path, size_t index) {
  WireReader r(msg, path, "piece " + std::to_string(index));
  SentencePieceModel::Piece p;  // proto2 defaults: "", 0.0, NORMAL
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    r.tag(field, wire);
    switch (field) {
      case 1: r.expect(field, wire, Len, "piece"); p.piece = std::string(r.bytes("piece")); break;
      case 2: r.expect(field, wire, Fixed32, "score"); p.score = to_float(r.fixed32("score")); break;
      case 3: {
        r.expect(field, wire, Varint, "type");
        const int32_t t = to_int32(r.varint("type"));
        if (t < 1 || t > 6) r.fail("unknown piece type " + std::to_string(t));
        p.type = static_cast<PieceType>(t);
        break;
      }
      default: r.skip(field, wire);
    }
  }
  return p;
}

void parse_trainer_spec(std::string_view msg, const std::string& path, SentencePieceModel& m) {
  WireReader r(msg, path, "trainer_spec");
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    r.tag(field, wire);
    switch (field) {
      case 3: r.expect(field, wire, Varint, "model_type"); m.model_type = to_int32(r.varint("model_type")); break;
      case 24:
        r.expect(field, wire, Varint, "treat_whitespace_as_suffix");
        if (r.varint("treat_whitespace_as_suffix") != 0) {
          throw FormatError(path, "treat_whitespace_as_suffix is not supported");
        }
        break;
      case 35: r.expect(field, wire, Varint, "byte_fallback"); m.byte_fallback = r.varint("byte_fallback") != 0; break;
      case 40: r.expect(field, wire, Varint, "unk_id"); m.unk_id = to_int32(r.varint("unk_id")); break;
      case 41: r.expect(field, wire, Varint, "bos_id"); m.bos_id = to_int32(r.varint("bos_id")); break;
      case 42: r.expect(field, wire, Varint, "eos_id"); m.eos_id = to_int32(r.varint("eos_id")); break;
      case 43: r.expect(field, wire, Varint, "pad_id"); m.pad_id = to_int32(r.varint("pad_id")); break;
      case 44: r.expect(field, wire, Len, "unk_surface"); m.unk_surface = std::string(r.bytes("unk_surface")); break;
      default: r.skip(field, wire);  // vocab_size, training options, ...
    }
  }
}

// Fills the normalizer fields of `m` (the normalizer_spec) or only checks that
// a denormalizer is the identity (`m` null).
void parse_normalizer_spec(std::string_view msg, const std::string& path, SentencePieceModel* m,
                           const char* what) {
  WireReader r(msg, path, what);
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    r.tag(field, wire);
    if (!m) {
      if (field == 2 && wire == Len && !r.bytes("precompiled_charsmap").empty()) {
        throw FormatError(path, "a denormalizer is not supported: only BPE models with the identity "
                                "normalizer are supported");
      } else if (field != 2 || wire != Len) {
        r.skip(field, wire);
      }
      continue;
    }
    switch (field) {
      case 1: r.expect(field, wire, Len, "name"); m->normalizer_name = std::string(r.bytes("name")); break;
      case 2:
        r.expect(field, wire, Len, "precompiled_charsmap");
        m->precompiled_charsmap = std::string(r.bytes("precompiled_charsmap"));
        break;
      case 3: r.expect(field, wire, Varint, "add_dummy_prefix"); m->add_dummy_prefix = r.varint("add_dummy_prefix") != 0; break;
      case 4:
        r.expect(field, wire, Varint, "remove_extra_whitespaces");
        m->remove_extra_whitespaces = r.varint("remove_extra_whitespaces") != 0;
        break;
      case 5: r.expect(field, wire, Varint, "escape_whitespaces"); m->escape_whitespaces = r.varint("escape_whitespaces") != 0; break;
      default: r.skip(field, wire);
    }
  }
}

// ---- writer

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_tag(std::string& out, uint32_t field, int wire) { put_varint(out, (uint64_t{field} << 3) | wire); }

// int32 and enum values: negatives are sign-extended to 64 bits, as protobuf does.
void put_int32(std::string& out, uint32_t field, int32_t v) {
  put_tag(out, field, Varint);
  put_varint(out, static_cast<uint64_t>(static_cast<int64_t>(v)));
}

void put_bool(std::string& out, uint32_t field, bool v) {
  put_tag(out, field, Varint);
  put_varint(out, v ? 1 : 0);
}

void put_bytes(std::string& out, uint32_t field, std::string_view v) {
  put_tag(out, field, Len);
  put_varint(out, v.size());
  out.append(v.data(), v.size());
}

void put_float(std::string& out, uint32_t field, float f) {
  uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  put_tag(out, field, Fixed32);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

bool valid_id(const SentencePieceModel& m, int32_t id) {
  return id >= 0 && static_cast<size_t>(id) < m.pieces.size();
}

}  // namespace

SentencePieceModel parse_sentencepiece_model(std::string_view bytes, const std::string& path) {
  SentencePieceModel m;
  // proto2 defaults of the fields SentencePieceModel defaults differently.
  m.model_type = 1;  // UNIGRAM
  m.byte_fallback = false;
  m.normalizer_name.clear();
  m.remove_extra_whitespaces = true;
  if (bytes.empty()) throw FormatError(path, "empty file, not a sentencepiece model");

  WireReader r(bytes, path, "ModelProto");
  while (!r.done()) {
    uint32_t field = 0;
    int wire = 0;
    r.tag(field, wire);
    switch (field) {
      case 1:
        r.expect(field, wire, Len, "pieces");
        m.pieces.push_back(parse_piece(r.bytes("pieces"), path, m.pieces.size()));
        break;
      // Repeated occurrences of a sub-message merge, as protobuf's parser does.
      case 2: r.expect(field, wire, Len, "trainer_spec"); parse_trainer_spec(r.bytes("trainer_spec"), path, m); break;
      case 3:
        r.expect(field, wire, Len, "normalizer_spec");
        parse_normalizer_spec(r.bytes("normalizer_spec"), path, &m, "normalizer_spec");
        break;
      case 5:
        r.expect(field, wire, Len, "denormalizer_spec");
        parse_normalizer_spec(r.bytes("denormalizer_spec"), path, nullptr, "denormalizer_spec");
        break;
      default: r.skip(field, wire);  // self_test_data and anything newer
    }
  }
  if (m.pieces.empty()) throw FormatError(path, "sentencepiece model has no pieces");
  return m;
}

std::string serialize_sentencepiece_model(const SentencePieceModel& m) {
  std::string out;
  std::string msg;
  for (const auto& p : m.pieces) {
    msg.clear();
    put_bytes(msg, 1, p.piece);
    put_float(msg, 2, p.score);
    if (p.type != PieceType::Normal) put_int32(msg, 3, static_cast<int32_t>(p.type));  // proto2 default
    put_bytes(out, 1, msg);
  }

  msg.clear();
  put_int32(msg, 3, m.model_type);
  put_int32(msg, 4, static_cast<int32_t>(m.pieces.size()));
  put_bool(msg, 35, m.byte_fallback);
  put_int32(msg, 40, m.unk_id);
  put_int32(msg, 41, m.bos_id);
  put_int32(msg, 42, m.eos_id);
  put_int32(msg, 43, m.pad_id);
  put_bytes(msg, 44, m.unk_surface);
  // sentencepiece finds bos/eos/pad/unk by these piece names (defaults
  // "<unk>", "<s>", "</s>", "<pad>"), not by the ids: write the real ones.
  const std::pair<uint32_t, int32_t> named[] = {{45, m.unk_id}, {46, m.bos_id}, {47, m.eos_id}, {48, m.pad_id}};
  for (const auto& [field, id] : named) {
    if (valid_id(m, id)) put_bytes(msg, field, m.pieces[static_cast<size_t>(id)].piece);
  }
  put_bytes(out, 2, msg);

  msg.clear();
  put_bytes(msg, 1, m.normalizer_name);
  if (!m.precompiled_charsmap.empty()) put_bytes(msg, 2, m.precompiled_charsmap);
  put_bool(msg, 3, m.add_dummy_prefix);
  put_bool(msg, 4, m.remove_extra_whitespaces);
  put_bool(msg, 5, m.escape_whitespaces);
  put_bytes(out, 3, msg);
  return out;
}

}  // namespace flashback
