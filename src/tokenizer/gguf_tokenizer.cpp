// The tokenizer a GGUF file embeds (tokenizer.ggml.*): SentencePiece for
// tokenizer.ggml.model = "llama", byte-level BPE for "gpt2".
#include "flashback/error.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

namespace {

SentencePieceModel gguf_vocab(const GgufFile& g) {
  const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufValue::Array || tokens->elem != GgufValue::String)
    throw FormatError(g.path, "tokenizer.ggml.tokens is missing or not a string array");
  const GgufValue* scores = g.find("tokenizer.ggml.scores");
  const GgufValue* types = g.find("tokenizer.ggml.token_type");
  const size_t n = tokens->items.size();
  if (scores && (scores->type != GgufValue::Array || scores->items.size() != n || scores->elem != GgufValue::F32))
    throw FormatError(g.path, "tokenizer.ggml.scores must be a float32 array as long as the token list");
  if (types && (types->type != GgufValue::Array || types->items.size() != n || (!types->items.empty() && !types->items[0].is_integer())))
    throw FormatError(g.path, "tokenizer.ggml.token_type must be an integer array as long as the token list");
  SentencePieceModel m;
  m.pieces.resize(n);
  bool has_bytes = false;
  for (size_t i = 0; i < n; ++i) {
    auto& p = m.pieces[i];
    p.piece = tokens->items[i].s;
    p.score = scores ? static_cast<float>(scores->items[i].f) : 0.0f;
    int64_t t = types ? types->items[i].i : 1;
    if (t < 1 || t > 6) t = 1;  // 0 = undefined in llama.cpp: treat as normal
    p.type = static_cast<PieceType>(t);
    has_bytes |= p.type == PieceType::Byte;
  }
  auto id = [&](const char* key, int64_t fallback) {
    int64_t v = g.get_int(key, fallback);
    return (v < 0 || v >= static_cast<int64_t>(n)) ? -1 : static_cast<int32_t>(v);
  };
  m.unk_id = id("tokenizer.ggml.unknown_token_id", 0);
  m.bos_id = id("tokenizer.ggml.bos_token_id", 1);
  m.eos_id = id("tokenizer.ggml.eos_token_id", 2);
  m.pad_id = id("tokenizer.ggml.padding_token_id", -1);
  m.byte_fallback = has_bytes;
  const GgufValue* sp = g.find("tokenizer.ggml.add_space_prefix");
  m.add_dummy_prefix = sp ? sp->i != 0 : true;
  m.remove_extra_whitespaces = false;
  return m;
}

const GgufValue& string_array(const GgufFile& g, const char* key) {
  const GgufValue* v = g.find(key);
  if (!v || v->type != GgufValue::Array || v->elem != GgufValue::String)
    throw FormatError(g.path, std::string(key) + " is missing or not a string array");
  return *v;
}

BpeModel gguf_bpe(const GgufFile& g) {
  const GgufValue& tokens = string_array(g, "tokenizer.ggml.tokens");
  const size_t n = tokens.items.size();
  const GgufValue* types = g.find("tokenizer.ggml.token_type");
  if (types && (types->type != GgufValue::Array || types->items.size() != n || (!types->items.empty() && !types->items[0].is_integer())))
    throw FormatError(g.path, "tokenizer.ggml.token_type must be an integer array as long as the token list");
  const GgufValue* merges = g.find("tokenizer.ggml.merges");
  if (!merges) throw FormatError(g.path, "a gpt2 (byte-level BPE) vocabulary without tokenizer.ggml.merges");
  const GgufValue& m = string_array(g, "tokenizer.ggml.merges");
  BpeModel b;
  b.tokens.reserve(n);
  b.types.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    b.tokens.push_back(tokens.items[i].s);
    int64_t t = types ? types->items[i].i : 1;
    if (t < 1 || t > 6) t = 1;  // 0 = undefined in llama.cpp: treat as normal
    b.types.push_back(static_cast<PieceType>(t));
  }
  b.merges.reserve(m.items.size());
  for (size_t r = 0; r < m.items.size(); ++r) {
    const std::string& s = m.items[r].s;
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == s.size())
      throw FormatError(g.path, "tokenizer.ggml.merges[" + std::to_string(r) + "] = '" + s + "' is not two tokens");
    b.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
  }
  b.pre = g.find("tokenizer.ggml.pre") ? g.get_string("tokenizer.ggml.pre") : "default";
  // llama.cpp takes a whole piece that is a token as it is for Llama-3's vocabularies.
  b.ignore_merges = b.pre == "llama3" || b.pre == "llama-bpe";
  auto id = [&](const char* key) {
    const int64_t v = g.get_int(key, -1);
    return (v < 0 || v >= static_cast<int64_t>(n)) ? -1 : static_cast<int32_t>(v);
  };
  b.bos_id = id("tokenizer.ggml.bos_token_id");
  b.eos_id = id("tokenizer.ggml.eos_token_id");
  b.unk_id = id("tokenizer.ggml.unknown_token_id");
  b.pad_id = id("tokenizer.ggml.padding_token_id");
  auto flag = [&](const char* key, bool fallback) {
    const GgufValue* v = g.find(key);
    return v ? v->i != 0 : fallback;
  };
  b.add_bos = flag("tokenizer.ggml.add_bos_token", false);
  b.add_eos = flag("tokenizer.ggml.add_eos_token", false);
  return b;
}

}  // namespace

Tokenizer gguf_tokenizer(const GgufFile& g) {
  const std::string model = g.get_string("tokenizer.ggml.model");
  try {
    if (model == "llama") return Tokenizer(gguf_vocab(g), g.path);
    if (model == "gpt2") return Tokenizer(gguf_bpe(g), g.path);
  } catch (const InvalidArgument& e) {
    throw FormatError(g.path, e.what());
  }
  throw FormatError(g.path, "tokenizer.ggml.model '" + model + "' is not supported (llama, gpt2)");
}

}  // namespace flashback
