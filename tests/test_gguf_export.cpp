// GGUF export (save_gguf, write_gguf), held to the GGUF that llama.cpp's converter wrote for stories260K
// and to a round trip through flashback's own reader. llama.cpp running the written files is
// tests/python/test_gguf_export.py.
#include <c10/core/InferenceMode.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "flashback/flashback.hpp"
#include "flashback/formats/gguf.hpp"
#include "bpe_vocab.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::kSpace;
using flashback::test::shared;

namespace {

const GgufTensorInfo* find_info(const GgufFile& g, const std::string& name) {
  for (const auto& i : g.infos)
    if (i.name == name) return &i;
  return nullptr;
}

bool same_bytes(const GgufFile& a, const GgufTensorInfo& ia, const GgufFile& b, const GgufTensorInfo& ib) {
  return ia.nbytes == ib.nbytes && std::memcmp(a.tensor_data(ia), b.tensor_data(ib), ia.nbytes) == 0;
}

at::Tensor logits_of(LlamaForCausalLM& m, const std::vector<int64_t>& ids) {
  c10::InferenceMode guard;
  return m->forward(at::tensor(ids).unsqueeze(0)).to(at::kFloat);
}

}  // namespace

TEST_CASE("stories260K written as F32 GGUF holds the tensors llama.cpp's converter wrote, bit for bit", "[gguf][export]") {
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  const Tokenizer tok = load_tokenizer(ck);
  const std::string out = flashback::test::temp_dir("gguf-export") + "/stories260K.gguf";
  save_gguf(out, ck.config, ck.tensors, tok, at::kFloat);

  const GgufFile ours = read_gguf(out);
  const GgufFile ref = read_gguf(shared("models/stories260K/stories260K.gguf"));
  CHECK(ours.version == 3);
  // The converter wrote the tied classifier out as output.weight; flashback leaves it tied.
  REQUIRE(ours.infos.size() + 1 == ref.infos.size());
  for (const auto& info : ours.infos) {
    INFO(info.name);
    const GgufTensorInfo* r = find_info(ref, info.name);
    REQUIRE(r != nullptr);
    CHECK(info.ggml_type == 0);
    CHECK(info.shape == r->shape);
    CHECK(same_bytes(ours, info, ref, *r));  // Q and K rows back in Meta's order
  }
  CHECK(same_bytes(ours, *find_info(ours, "token_embd.weight"), ref, *find_info(ref, "output.weight")));
  for (const char* key : {"llama.embedding_length", "llama.feed_forward_length", "llama.block_count",
                          "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
                          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id"}) {
    INFO(key);
    CHECK(ours.get_int(key) == ref.get_int(key));
  }
  CHECK(ours.get_float("llama.attention.layer_norm_rms_epsilon", 0) == ref.get_float("llama.attention.layer_norm_rms_epsilon", 1));
  CHECK(ours.get_string("general.architecture") == "llama");
  CHECK(ours.get_string("tokenizer.ggml.model") == "llama");
  for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}) {
    INFO(key);
    const GgufValue& a = *ours.find(key);
    const GgufValue& b = *ref.find(key);
    REQUIRE(a.items.size() == b.items.size());
    CHECK(a.elem == b.elem);
    for (size_t i = 0; i < a.items.size(); ++i)
      if (a.items[i].s != b.items[i].s || a.items[i].f != b.items[i].f || a.items[i].i != b.items[i].i) FAIL(key << "[" << i << "]");
  }
}

TEST_CASE("GGUF export round-trips through the reader: config, tokenizer, weights and logits", "[gguf][export]") {
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  const Tokenizer tok = load_tokenizer(ck);
  LlamaForCausalLM original = load_model(ck);
  const std::vector<int64_t> ids = {1, 403, 407, 261, 378, 13, 77, 300, 411, 29};
  const at::Tensor want = logits_of(original, ids);
  const std::string dir = flashback::test::temp_dir("gguf-roundtrip");
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    INFO(c10::toString(dt));
    const std::string path = dir + "/m." + c10::toString(dt) + ".gguf";
    save_gguf(path, ck.config, ck.tensors, tok, dt);
    Checkpoint back = read_checkpoint(path);
    CHECK(back.format == "gguf");
    CHECK(back.config.hidden_size == ck.config.hidden_size);
    CHECK(back.config.num_key_value_heads == ck.config.num_key_value_heads);
    CHECK(back.config.intermediate_size == ck.config.intermediate_size);
    CHECK(back.config.rope_theta == ck.config.rope_theta);
    CHECK(back.config.tie_word_embeddings);
    CHECK(back.config.torch_dtype == (dt == at::kFloat ? "float32" : dt == at::kHalf ? "float16" : "bfloat16"));
    REQUIRE(back.tokenizer.has_value());
    CHECK(back.tokenizer->vocab_size() == tok.vocab_size());
    CHECK(back.tokenizer->encode("Once upon a time, a little dog", true) == tok.encode("Once upon a time, a little dog", true));
    for (const auto& [name, t] : ck.tensors) {
      INFO(name);
      REQUIRE(back.tensors.count(name));
      const at::Tensor& b = back.tensors.at(name);
      const at::ScalarType stored = t.dim() == 1 ? at::kFloat : dt;  // norms stay F32
      CHECK(b.scalar_type() == stored);
      CHECK(at::equal(b, t.to(stored)));  // the HF row order restored exactly
    }
    if (dt == at::kFloat) {
      LlamaForCausalLM m = load_model(back);
      CHECK(at::equal(logits_of(m, ids), want));
    }
  }
}

TEST_CASE("GGUF export keeps a byte-level BPE vocabulary llama.cpp's way, and pads it to the model's rows", "[gguf][export]") {
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));  // 512 rows
  BpeModel bpe = flashback::test::byte_vocab({"th", "the", kSpace + "the", "<|endoftext|>"},
                                             {{"t", "h"}, {"th", "e"}, {kSpace, "the"}}, "smollm");
  bpe.types.back() = PieceType::Control;
  bpe.eos_id = static_cast<int32_t>(bpe.tokens.size() - 1);
  const Tokenizer tok(bpe);
  const std::string path = flashback::test::temp_dir("gguf-bpe") + "/bpe.gguf";
  save_gguf(path, ck.config, ck.tensors, tok, at::kFloat);

  const GgufFile g = read_gguf(path);
  CHECK(g.get_string("tokenizer.ggml.model") == "gpt2");
  CHECK(g.get_string("tokenizer.ggml.pre") == "smollm");
  const GgufValue& tokens = *g.find("tokenizer.ggml.tokens");
  REQUIRE(tokens.items.size() == 512);
  CHECK(tokens.items[tok.vocab_size()].s == "[PAD" + std::to_string(tok.vocab_size()) + "]");
  CHECK(g.find("tokenizer.ggml.token_type")->items[511].i == static_cast<int64_t>(PieceType::Unused));
  CHECK(g.find("tokenizer.ggml.merges")->items[2].s == kSpace + " the");
  CHECK(g.get_int("tokenizer.ggml.eos_token_id") == bpe.eos_id);
  CHECK(g.find("tokenizer.ggml.bos_token_id") == nullptr);  // none: not written as -1

  const Tokenizer back = read_checkpoint(path).tokenizer.value();
  CHECK(back.family() == TokenizerFamily::ByteLevelBpe);
  CHECK(back.encode("the then", false) == tok.encode("the then", false));
  CHECK(back.bpe_model().merges == bpe.merges);
}

TEST_CASE("GGUF export refuses what the format cannot hold, naming it", "[gguf][export][bad]") {
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  const Tokenizer tok = load_tokenizer(ck);
  const std::string dir = flashback::test::temp_dir("gguf-bad");
  CHECK_THROWS_WITH(save_gguf(dir + "/a.gguf", ck.config, ck.tensors, tok, at::kDouble),
                    Catch::Contains("dtype Double"));
  LlamaConfig odd = ck.config;
  odd.head_dim = 4;
  CHECK_THROWS_WITH(save_gguf(dir + "/b.gguf", odd, ck.tensors, tok, at::kFloat), Catch::Contains("head_dim 4"));
  LlamaConfig small = ck.config;
  small.vocab_size = 100;
  CHECK_THROWS_WITH(save_gguf(dir + "/c.gguf", small, ck.tensors, tok, at::kFloat),
                    Catch::Contains("the tokenizer has 512 pieces"));
  auto extra = ck.tensors;
  extra["model.layers.0.self_attn.rotary.weight"] = at::zeros({2});
  CHECK_THROWS_WITH(save_gguf(dir + "/d.gguf", ck.config, extra, tok, at::kFloat),
                    Catch::Contains("'model.layers.0.self_attn.rotary.weight' has no GGUF name"));

  // The format layer: a byte count that is not the type's, and a name given twice.
  std::vector<float> v(64, 1.0f);
  GgufTensorOut t{"a", 0, {2, 32}, v.data(), 64 * 4};
  GgufTensorOut short_one{"b", 0, {2, 32}, v.data(), 60 * 4};
  CHECK_THROWS_WITH(write_gguf(dir + "/e.gguf", {}, {t, short_one}), Catch::Contains("'b': 240 bytes for 64 F32 values"));
  CHECK_THROWS_WITH(write_gguf(dir + "/f.gguf", {}, {t, t}), Catch::Contains("'a' given twice"));
  GgufTensorOut q4{"q", 2, {3, 20}, v.data(), 0};  // Q4_0 rows come in blocks of 32
  CHECK_THROWS_WITH(write_gguf(dir + "/g.gguf", {}, {q4}), Catch::Contains("not a multiple of the Q4_0 block size 32"));
  CHECK(std::filesystem::is_empty(dir));  // nothing written, no temporary left
  // A file write_gguf wrote with an alignment of its own reads back.
  write_gguf(dir + "/h.gguf", {{"general.alignment", gguf_u32(64)}, {"x", gguf_string("y")}}, {t});
  const GgufFile h = read_gguf(dir + "/h.gguf");
  CHECK(h.alignment == 64);
  CHECK(h.get_string("x") == "y");
  CHECK(std::memcmp(h.tensor_data(h.infos[0]), v.data(), 256) == 0);
}
