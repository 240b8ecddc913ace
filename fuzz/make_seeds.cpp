// fuzz_seeds OUT SHARED: writes a seed corpus per harness into OUT/<harness>/: the real files in
// SHARED (../shared: checkpoints, tokenizers, a PEFT adapter, configs, WikiText and TinyStories
// text) and small valid files made with flashback's own writers (every safetensors dtype, GGUF
// metadata of every value type with tensors of every dequantizable type, llama2.c checkpoints
// of both header versions, tokenizers of both families). The fuzzers start from these; the
// ordinary suite replays them (fuzz_replay), so every harness's properties hold on real files.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/formats/ggml_types.hpp"
#include "flashback/formats/safetensors.hpp"
#include "flashback/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace flashback;

namespace {

fs::path out_root;
std::string shared;

void put(const std::string& harness, const std::string& name, const std::string& bytes) {
  const fs::path d = out_root / harness;
  fs::create_directories(d);
  std::ofstream(d / name, std::ios::binary) << bytes;
}

std::string slurp(const fs::path& p, size_t limit = std::string::npos) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string() + ": missing (FLASHBACK_SHARED or the second argument: ../shared)");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s.substr(0, limit);
}
std::string from_shared(const std::string& rel, size_t limit = std::string::npos) {
  return slurp(fs::path(shared) / rel, limit);
}

template <class T>
void append(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// ---- safetensors: one file per dtype, metadata, a zero-size tensor, and none at all.
void safetensors_seeds() {
  static const std::vector<uint8_t> bytes(256, 0x3C);
  auto raw = [](const std::string& name, DType t, std::vector<int64_t> shape) {
    RawTensor r;
    r.name = name;
    r.dtype = t;
    r.shape = std::move(shape);
    r.nbytes = static_cast<size_t>(r.numel()) * dtype_size(t);
    r.data = bytes.data();
    return r;
  };
  const fs::path tmp = out_root / "safetensors.tmp";
  int i = 0;
  for (DType t : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8,
                  DType::U8, DType::Bool}) {
    write_safetensors(tmp.string(), {raw("a.weight", t, {2, 3}), raw("b", t, {4}), raw("empty", t, {0, 5})},
                      {{"format", "pt"}, {"note", "seed"}});
    put("safetensors", "dtype" + std::to_string(i++) + ".safetensors", slurp(tmp));
  }
  write_safetensors(tmp.string(), {}, {});
  put("safetensors", "none.safetensors", slurp(tmp));
  fs::remove(tmp);
  put("safetensors", "adapter_model.safetensors",
      from_shared("models/hf-fixtures/tiny-llama-gqa-marks-lora/adapter_model.safetensors"));
  put("safetensors", "model-00002-of-00006.safetensors",
      from_shared("models/hf-fixtures/tiny-llama-gqa-sharded/model-00002-of-00006.safetensors"));
}

// ---- GGUF
struct Gguf {
  std::string kv, infos, data;
  uint64_t n_kv = 0, n_tensors = 0;
  static void str(std::string& s, const std::string& v) {
    append<uint64_t>(s, v.size());
    s += v;
  }
  template <class T>
  void scalar(const std::string& key, uint32_t type, T v) {
    str(kv, key);
    append<uint32_t>(kv, type);
    append<T>(kv, v);
    ++n_kv;
  }
  void string(const std::string& key, const std::string& v) {
    str(kv, key);
    append<uint32_t>(kv, 8);
    str(kv, v);
    ++n_kv;
  }
  void strings(const std::string& key, const std::vector<std::string>& v) {
    str(kv, key);
    append<uint32_t>(kv, 9);
    append<uint32_t>(kv, 8);
    append<uint64_t>(kv, v.size());
    for (const auto& s : v) str(kv, s);
    ++n_kv;
  }
  template <class T>
  void array(const std::string& key, uint32_t elem, const std::vector<T>& v) {
    str(kv, key);
    append<uint32_t>(kv, 9);
    append<uint32_t>(kv, elem);
    append<uint64_t>(kv, v.size());
    for (T x : v) append<T>(kv, x);
    ++n_kv;
  }
  // A tensor of `row` values per row and `rows` rows, of ggml type `type`, random bytes.
  void tensor(const std::string& name, uint32_t type, uint64_t row, uint64_t rows, std::mt19937& rng) {
    const GgmlType* t = find_ggml_type(type);
    str(infos, name);
    append<uint32_t>(infos, 2);
    append<uint64_t>(infos, row);
    append<uint64_t>(infos, rows);
    append<uint32_t>(infos, type);
    while (data.size() % 32) data.push_back(0);
    append<uint64_t>(infos, data.size());
    const uint64_t n = row * rows / t->block * t->bytes;
    for (uint64_t i = 0; i < n; ++i) data.push_back(static_cast<char>(rng() & 0xFF));
    ++n_tensors;
  }
  std::string file(uint32_t version = 3) const {
    std::string f = "GGUF";
    append<uint32_t>(f, version);
    append<uint64_t>(f, n_tensors);
    append<uint64_t>(f, n_kv);
    f += kv + infos;
    while (f.size() % 32) f.push_back(0);
    return f + data;
  }
};

void gguf_seeds() {
  std::mt19937 rng(7);
  {  // every metadata value type, and a tensor of every type flashback reads
    Gguf g;
    g.string("general.architecture", "llama");
    g.scalar<uint8_t>("k.u8", 0, 200);
    g.scalar<int8_t>("k.i8", 1, -5);
    g.scalar<uint16_t>("k.u16", 2, 60000);
    g.scalar<int16_t>("k.i16", 3, -300);
    g.scalar<uint32_t>("llama.block_count", 4, 1);
    g.scalar<int32_t>("llama.context_length", 5, 128);
    g.scalar<float>("llama.attention.layer_norm_rms_epsilon", 6, 1e-5f);
    g.scalar<uint8_t>("k.bool", 7, 1);
    g.scalar<uint64_t>("llama.embedding_length", 10, 256);
    g.scalar<int64_t>("k.i64", 11, -1);
    g.scalar<double>("llama.rope.freq_base", 12, 10000.0);
    g.scalar<uint32_t>("general.alignment", 4, 32);
    g.array<int32_t>("k.ints", 5, {1, 2, 3});
    g.array<float>("k.floats", 6, {0.5f, -1.0f});
    for (uint32_t type = 0; type < 64; ++type)
      if (find_ggml_type(type) && (type <= 1 || type == 30 || ggml_type_dequantizable(type)))
        g.tensor("t" + std::to_string(type), type, 256, 2, rng);
    put("gguf", "types.gguf", g.file());
  }
  {  // a SentencePiece vocabulary
    Gguf g;
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<float> scores = {0, 0, 0};
    std::vector<int32_t> types = {2, 3, 3};
    char buf[8];
    for (int c = 0; c < 256; ++c) {
      std::snprintf(buf, sizeof buf, "<0x%02X>", c);
      tokens.push_back(buf), scores.push_back(0), types.push_back(6);
    }
    for (const char* p : {"\xE2\x96\x81", "\xE2\x96\x81H", "el", "lo", "ello"})
      tokens.push_back(p), scores.push_back(-static_cast<float>(tokens.size())), types.push_back(1);
    g.string("tokenizer.ggml.model", "llama");
    g.strings("tokenizer.ggml.tokens", tokens);
    g.array<float>("tokenizer.ggml.scores", 6, scores);
    g.array<int32_t>("tokenizer.ggml.token_type", 5, types);
    g.scalar<uint32_t>("tokenizer.ggml.bos_token_id", 4, 1);
    g.scalar<uint32_t>("tokenizer.ggml.eos_token_id", 4, 2);
    g.scalar<uint8_t>("tokenizer.ggml.add_space_prefix", 7, 1);
    put("gguf", "llama-vocab.gguf", g.file());
    put("gguf", "llama-vocab-v2.gguf", g.file(2));
  }
  {  // a byte-level BPE vocabulary
    Gguf g;
    std::vector<std::string> tokens;
    for (int c = '!'; c <= '~'; ++c) tokens.emplace_back(1, char(c));
    tokens.push_back("\xC4\xA0");
    tokens.push_back("he");
    tokens.push_back("<|endoftext|>");
    std::vector<int32_t> types(tokens.size(), 1);
    types.back() = 3;
    g.string("tokenizer.ggml.model", "gpt2");
    g.string("tokenizer.ggml.pre", "smollm");
    g.strings("tokenizer.ggml.tokens", tokens);
    g.array<int32_t>("tokenizer.ggml.token_type", 5, types);
    g.strings("tokenizer.ggml.merges", {"h e"});
    g.scalar<uint32_t>("tokenizer.ggml.eos_token_id", 4, static_cast<uint32_t>(tokens.size() - 1));
    put("gguf", "gpt2-vocab.gguf", g.file());
  }
  // The real files: their headers (the fuzzers' -max_len cuts the data).
  put("gguf", "stories260K.gguf", from_shared("models/stories260K/stories260K.gguf", 65536));
  put("gguf", "llama-2-tiny-random.gguf", from_shared("models/llama-2-tiny-random/llama-2-tiny-random.gguf", 65536));
}

void dequantize_seeds() {
  std::mt19937 rng(11);
  std::vector<uint32_t> types;
  for (uint32_t id = 0; id < 64; ++id)
    if (ggml_type_dequantizable(id)) types.push_back(id);
  for (size_t k = 0; k < types.size(); ++k) {
    const GgmlType* t = find_ggml_type(types[k]);
    std::string s{static_cast<char>(k), 1};
    for (uint64_t i = 0; i < 2 * t->bytes; ++i) s.push_back(static_cast<char>(rng() & 0xFF));
    put("dequantize", std::string(t->name) + ".bin", s);
  }
}

// ---- llama2.c checkpoints: legacy (v0, RoPE tables, unshared classifier) and v1.
void llama2c_seeds() {
  const int32_t D = 8, F = 16, L = 1, H = 2, KV = 1, V = 8, T = 4, hd = D / H;
  const uint64_t per_layer = 2 * D + D * D + 2 * D * (KV * hd) + D * D + 3 * D * F;
  for (int version : {0, 1}) {
    for (bool shared_cls : {true, false}) {
      std::string f;
      const int32_t v = shared_cls ? V : -V;
      if (version == 1) {
        append<uint32_t>(f, 0x616b3432);
        append<int32_t>(f, 1);
        for (int32_t x : {D, F, L, H, KV, V, T}) append<int32_t>(f, x);
        f.push_back(shared_cls ? 1 : 0);
        f.resize(256, 0);
      } else {
        for (int32_t x : {D, F, L, H, KV, v, T}) append<int32_t>(f, x);
      }
      const uint64_t floats = V * D + L * per_layer + D + (version == 0 ? uint64_t(T) * hd : 0) + (shared_cls ? 0 : V * D);
      for (uint64_t i = 0; i < floats; ++i) append<float>(f, 0.01f * static_cast<float>(i % 100));
      put("llama2c", "v" + std::to_string(version) + (shared_cls ? "-shared" : "-unshared") + ".bin", f);
    }
  }
  put("llama2c", "stories260K.bin", from_shared("models/stories260K/stories260K.bin", 65536));
}

SentencePieceModel small_sentencepiece() {
  SentencePieceModel m;
  m.pieces = {{"<unk>", 0, PieceType::Unknown}, {"<s>", 0, PieceType::Control}, {"</s>", 0, PieceType::Control}};
  char buf[8];
  for (int c = 0; c < 256; ++c) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", c);
    m.pieces.push_back({buf, 0, PieceType::Byte});
  }
  float score = 0;
  for (const char* p : {"\xE2\x96\x81", "\xE2\x96\x81t", "he", "\xE2\x96\x81the", "in", "<mark>"})
    m.pieces.push_back({p, score -= 1, PieceType::Normal});
  m.pieces.back().type = PieceType::UserDefined;
  return m;
}

void tokenizer_seeds() {
  // llama2.c tokenizer.bin
  put("llama2c_tokenizer", "tok512.bin", from_shared("models/stories260K/tok512.bin"));
  put("llama2c_tokenizer", "llama2-tokenizer.bin", from_shared("models/llama2-tokenizer/tokenizer.bin", 65536));
  {
    std::string f;
    append<int32_t>(f, 8);
    for (const char* p : {"<unk>", "\n<s>\n", "\n</s>\n", "<0x41>", " the", "he", "\xC3\xA9"}) {
      append<float>(f, -1.5f);
      append<int32_t>(f, static_cast<int32_t>(std::strlen(p)));
      f += p;
    }
    put("llama2c_tokenizer", "small.bin", f);
  }
  // tokenizer.model
  put("sentencepiece_model", "tok512.model", from_shared("models/stories260K/tok512.model"));
  SentencePieceModel m = small_sentencepiece();
  put("sentencepiece_model", "small.model", serialize_sentencepiece_model(m));
  m.add_dummy_prefix = false;
  m.remove_extra_whitespaces = true;
  m.byte_fallback = false;
  m.pad_id = 3;
  put("sentencepiece_model", "small-flags.model", serialize_sentencepiece_model(m));
  // tokenizer.json: flashback's writer under every pre-tokenizer, and hand-written forms
  for (const std::string& pre : bpe_pre_tokenizers()) {
    BpeModel b;
    for (int c = '!'; c <= '~'; ++c) b.tokens.emplace_back(1, char(c));
    b.tokens.push_back("\xC4\xA0");
    b.tokens.push_back("he");
    b.merges = {{"h", "e"}};
    b.types.assign(b.tokens.size(), PieceType::Normal);
    b.tokens.push_back("<|endoftext|>");
    b.types.push_back(PieceType::Control);
    b.eos_id = static_cast<int32_t>(b.tokens.size()) - 1;
    b.pre = pre;
    put("tokenizer_json", pre + ".json", write_tokenizer_json(b));
  }
  put("tokenizer_json", "pairs.json", R"({"version": "1.0", "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
 "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
 "post_processor": null, "decoder": {"type": "ByteLevel"},
 "model": {"type": "BPE", "dropout": null, "unk_token": null, "ignore_merges": false, "byte_fallback": false,
           "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": [["a", "b"]]}})");
  put("tokenizer_json", "digits.json", R"({"added_tokens": [], "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
 {"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
 "model": {"type": "BPE", "vocab": {"1": 0, "2": 1, "12": 2}, "merges": ["1 2"]}})");
}

void json_seeds() {
  for (const char* d : {"tiny-llama-gqa", "tiny-llama-gqa-marks", "tiny-llama-gqa-fp16"})
    put("config_json", std::string(d) + ".json", from_shared(std::string("models/hf-fixtures/") + d + "/config.json"));
  put("config_json", "llama2-style.json", R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
 "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
 "rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}, "tie_word_embeddings": false,
 "bos_token_id": 1, "eos_token_id": [2, 32001], "torch_dtype": "float16"})");
  put("index_meta", "bm25.json", R"({"flashback_index": 1, "kind": "bm25", "passages": 1234, "max_tokens": 128,
 "corpus": "wiki.valid.raw", "format": "wikitext", "encoder": ""})");
  put("index_meta", "dense.json", R"({"flashback_index": 1, "kind": "dense", "passages": 7, "max_tokens": 64,
 "corpus": "c.jsonl", "format": "jsonl", "encoder": "/models/x.gguf", "dim": 64})");
}

void adapter_seeds() {
  const std::string cfg = from_shared("models/hf-fixtures/tiny-llama-gqa-marks-lora/adapter_config.json");
  const std::string st = from_shared("models/hf-fixtures/tiny-llama-gqa-marks-lora/adapter_model.safetensors");
  for (bool merge : {false, true}) {
    std::string s;
    append<uint16_t>(s, static_cast<uint16_t>(cfg.size() | (merge ? 0x8000 : 0)));
    put("adapter", merge ? "peft-merged.bin" : "peft.bin", s + cfg + st);
  }
}

void text_seeds() {
  const std::string wiki = from_shared("data/wikitext-103/wiki.valid.raw", 6000);
  const std::string stories = from_shared("data/tinystories/tinystories_sample.txt", 4000);
  const std::string jsonl = "{\"title\": \"Alpha\", \"text\": \"First line.\\nSecond line.\"}\n{\"text\": \"untitled\"}\n"
                            "{\"title\": null, \"text\": \"\\u00e9t\\u00e9 \\ud83d\\ude00\"}\n";
  // corpus: the first byte's low two bits pick the format, the rest the passage budget
  put("corpus", "wikitext.txt", std::string(1, char(0 | (31 << 2))) + wiki);
  put("corpus", "paragraphs.txt", std::string(1, char(1 | (15 << 2))) + stories);
  put("corpus", "jsonl.txt", std::string(1, char(2 | (7 << 2))) + jsonl);
  // encode_decode: the first byte picks the tokenizer
  for (int k = 0; k < 6; ++k) {
    put("encode_decode", "wiki" + std::to_string(k), std::string(1, char(k)) + wiki.substr(0, 1500));
    put("encode_decode", "stories" + std::to_string(k), std::string(1, char(k)) + stories.substr(0, 800));
    put("encode_decode", "unicode" + std::to_string(k),
        std::string(1, char(k)) + "  caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x98\x80\t\n\n 123 4567 <s> "
                                  "<|endoftext|> it's DON'T \r\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fuzz_seeds OUT_DIR SHARED_DIR\n";
    return 2;
  }
  out_root = argv[1];
  shared = argv[2];
  try {
    fs::remove_all(out_root);
    fs::create_directories(out_root);
    safetensors_seeds();
    gguf_seeds();
    dequantize_seeds();
    llama2c_seeds();
    tokenizer_seeds();
    json_seeds();
    adapter_seeds();
    text_seeds();
  } catch (const std::exception& e) {
    std::cerr << "fuzz_seeds: " << e.what() << "\n";
    return 1;
  }
  size_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(out_root)) n += e.is_regular_file();
  std::cout << "fuzz_seeds: " << n << " seeds in " << out_root.string() << "\n";
  return 0;
}
