// Bad checkpoints and bad arguments: a clear error naming the file and the
// problem, never a crash or a silently wrong model.
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "flashback/flashback.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_file.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::shared;
using Catch::Contains;

namespace {

// An HF directory holding the tiny GQA fixture, with `edit` applied to its tensors.
std::string hf_copy(const std::string& tag, const std::function<void(std::map<std::string, at::Tensor>&)>& edit,
                    const std::string& config_text = "") {
  std::string dir = flashback::test::temp_dir(tag);
  const std::string src = shared("models/hf-fixtures/tiny-llama-gqa");
  auto tensors = load_safetensors(src + "/model.safetensors");
  edit(tensors);
  save_safetensors(dir + "/model.safetensors", tensors);
  write_file_atomic(dir + "/config.json", config_text.empty() ? read_file(src + "/config.json") : config_text);
  return dir;
}

void write_bytes(const std::string& path, const std::string& bytes) { write_file_atomic(path, bytes); }

}  // namespace

TEST_CASE("HF checkpoints that carry rotary_emb.inv_freq (older Llama-2 exports) load", "[checkpoint]") {
  const std::string src = shared("models/hf-fixtures/tiny-llama-gqa");
  const LlamaConfig c = read_checkpoint(src).config;
  // HF's buffer: inv_freq_i = theta^(-2i/D), one per layer, saved by transformers < 4.31.
  at::Tensor inv_freq = at::pow(c.rope_theta, -at::arange(0, c.head_dim, 2, at::kFloat) / double(c.head_dim));
  auto with_inv_freq = hf_copy("inv-freq", [&](auto& t) {
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      t["model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq"] = inv_freq;
  });
  at::Tensor ids = at::tensor(std::vector<int64_t>{1, 5, 9, 200, 7}, at::kLong).view({1, -1});
  c10::InferenceMode guard;
  CHECK(at::equal(load_model(with_inv_freq)->forward(ids), load_model(src)->forward(ids)));
  // Only that exact name is forgiven.
  auto other = hf_copy("not-inv-freq", [&](auto& t) { t["model.layers.0.self_attn.rotary_emb.inv_freqs"] = inv_freq; });
  CHECK_THROWS_WITH(load_model(other), Contains("unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freqs'"));
}

TEST_CASE("HF directories: missing, misshapen and unexpected tensors", "[checkpoint][bad]") {
  auto missing = hf_copy("missing", [](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
  CHECK_THROWS_WITH(load_model(missing), Contains("missing tensor 'model.layers.1.mlp.up_proj.weight'"));

  auto shape = hf_copy("shape", [](auto& t) {
    t["model.layers.0.self_attn.k_proj.weight"] = at::zeros({64, 64});
  });
  CHECK_THROWS_WITH(load_model(shape), Contains("model.layers.0.self_attn.k_proj.weight' has shape [64, 64] but the config needs [16, 64]"));

  auto extra = hf_copy("extra", [](auto& t) { t["model.layers.0.self_attn.q_proj.bias"] = at::zeros({64}); });
  CHECK_THROWS_WITH(load_model(extra), Contains("unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"));

  auto ints = hf_copy("ints", [](auto& t) { t["model.norm.weight"] = at::zeros({64}, at::kInt); });
  CHECK_THROWS_WITH(load_model(ints), Contains("non-floating dtype"));

  // A config that disagrees with the weights.
  auto json = nlohmann::json::parse(read_file(shared("models/hf-fixtures/tiny-llama-gqa/config.json")));
  json["num_hidden_layers"] = 4;
  auto layers = hf_copy("layers", [](auto&) {}, json.dump());
  CHECK_THROWS_WITH(load_model(layers), Contains("missing tensor 'model.layers.3."));
  // One that claims a 96 GB model beside these 0.2 M parameters is refused before anything is allocated.
  json["num_hidden_layers"] = 3;
  json["vocab_size"] = int64_t(1) << 31;
  json["hidden_size"] = 64;
  json["num_attention_heads"] = 8;
  json["head_dim"] = 8;
  auto huge = hf_copy("huge", [](auto&) {}, json.dump());
  CHECK_THROWS_WITH(load_model(huge), Contains("huge") && Contains("the config implies 274878039488") &&
                                          Contains("parameters but the checkpoint holds 198080: not this model's weights"));

  CHECK_THROWS_WITH(read_checkpoint("/nonexistent/model"), Contains("/nonexistent/model: no such file or directory"));
  std::string empty = flashback::test::temp_dir("empty");
  CHECK_THROWS_WITH(read_checkpoint(empty), Contains("no config.json"));
}

TEST_CASE("config.json problems name the field", "[config][bad]") {
  auto base = nlohmann::json::parse(read_file(shared("models/hf-fixtures/tiny-llama-gqa/config.json")));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = base;
    edit(j);
    return j.dump();
  };
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j.erase("hidden_size"); }), "c.json"),
                    Contains("c.json: missing required field 'hidden_size'"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["num_key_value_heads"] = 3; }), "c.json"),
                    Contains("not a multiple of num_key_value_heads"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["hidden_size"] = "64"; }), "c.json"),
                    Contains("'hidden_size' must be an integer"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["hidden_act"] = "gelu"; }), "c.json"),
                    Contains("hidden_act"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["attention_bias"] = true; }), "c.json"),
                    Contains("attention_bias=true is not supported"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["rope_parameters"]["rope_type"] = "yarn"; }), "c.json"),
                    Contains("'yarn' is not supported"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["torch_dtype"] = "int8"; j["dtype"] = "int8"; }), "c.json"),
                    Contains("'int8' is not supported"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["vocab_size"] = -3; }), "c.json"),
                    Contains("vocab_size must be positive"));
  CHECK_THROWS_WITH(LlamaConfig::from_json("{not json", "c.json"), Contains("c.json: not valid JSON"));
  CHECK_THROWS_WITH(LlamaConfig::from_json(with([](auto& j) { j["attention_bias"] = "yes"; }), "c.json"),
                    Contains("c.json"));
}

TEST_CASE("truncated or lying checkpoint files are refused", "[checkpoint][bad]") {
  std::string dir = flashback::test::temp_dir("bad");
  const std::string bin = read_file(shared("models/stories260K/stories260K.bin"));
  const std::string gguf = read_file(shared("models/stories260K/stories260K.gguf"));

  write_bytes(dir + "/short.bin", bin.substr(0, bin.size() - 4));
  CHECK_THROWS_WITH(read_checkpoint(dir + "/short.bin"), Contains("short.bin") && Contains("truncated"));

  std::string lying = bin;
  int32_t dim = 96;  // header claims a wider model than the data holds
  std::memcpy(lying.data(), &dim, 4);
  write_bytes(dir + "/lying.bin", lying);
  CHECK_THROWS_WITH(read_checkpoint(dir + "/lying.bin"), Contains("lying.bin") && Contains("header implies"));

  std::string heads = bin;
  int32_t h = 7;  // 64 is not a multiple of 7
  std::memcpy(heads.data() + 12, &h, 4);
  write_bytes(dir + "/heads.bin", heads);
  CHECK_THROWS_WITH(read_checkpoint(dir + "/heads.bin"), Contains("dim is not a multiple of n_heads"));

  write_bytes(dir + "/short.gguf", gguf.substr(0, gguf.size() - 100));
  CHECK_THROWS_WITH(read_checkpoint(dir + "/short.gguf"), Contains("short.gguf") && Contains("truncated"));

  // Every cut of either file is an error, never a crash.
  for (size_t cut : {size_t(0), size_t(3), size_t(27), size_t(100), size_t(4000), size_t(9000), gguf.size() / 2}) {
    write_bytes(dir + "/cut.gguf", gguf.substr(0, cut));
    CHECK_THROWS_AS(read_checkpoint(dir + "/cut.gguf"), Error);
    write_bytes(dir + "/cut.bin", bin.substr(0, cut));
    CHECK_THROWS_AS(read_checkpoint(dir + "/cut.bin"), Error);
  }
}

TEST_CASE("bad arguments to the model", "[model][bad]") {
  c10::InferenceMode guard;
  LlamaForCausalLM m = load_model(shared("models/stories260K/stories260K.bin"));
  CHECK_THROWS_WITH(m->forward(at::tensor({int64_t(1), int64_t(512)}, at::kLong).view({1, 2})),
                    Contains("token id 512 is outside the vocabulary [0, 512)"));
  CHECK_THROWS_WITH(m->forward(at::tensor({int64_t(-1)}, at::kLong).view({1, 1})), Contains("token id -1"));
  CHECK_THROWS_WITH(m->forward(at::zeros({1, 513}, at::kLong)), Contains("exceeds max_position_embeddings (512)"));
  CHECK_THROWS_WITH(m->forward(at::zeros({1, 2}, at::kLong), at::tensor({int64_t(0), int64_t(600)}, at::kLong)),
                    Contains("position 600 is outside [0, 512)"));
  CHECK_THROWS_AS(m->forward(at::zeros({1, 2}, at::kInt)), InvalidArgument);
  CHECK_THROWS_AS(m->forward(at::zeros({2}, at::kLong)), InvalidArgument);

  KVCacheStore small = m->make_cache(1, 8);
  m->forward(at::zeros({1, 6}, at::kLong), {}, small);
  CHECK_THROWS_WITH(m->forward(at::zeros({1, 3}, at::kLong), {}, small), Contains("KV cache overflow"));
  CHECK(small.size() == 6);  // a refused forward leaves the cache as it was
  KVCacheStore batch2 = m->make_cache(2, 8);
  CHECK_THROWS_WITH(m->forward(at::zeros({1, 3}, at::kLong), {}, batch2), Contains("batch"));

  KVCacheStore cache = m->make_cache();
  GenerateOptions go;
  go.max_new_tokens = 10;
  std::vector<int64_t> long_prompt(510, 5);
  CHECK_THROWS_WITH(generate(*m, cache, long_prompt, go), Contains("exceed the maximum of 512 positions"));
  CHECK_THROWS_AS(generate(*m, cache, {}, go), InvalidArgument);
  go.max_new_tokens = 1;  // the last sampled token needs no slot, but the prompt must leave one free
  CHECK_THROWS_WITH(generate(*m, cache, std::vector<int64_t>(512, 5), go), Contains("fills all 512 positions"));
  CHECK(generate(*m, cache, std::vector<int64_t>(511, 5), go).ids.size() == 1);
  go.max_new_tokens = 10;
  go.sampling.top_p = 0;
  CHECK_THROWS_AS(generate(*m, cache, {1}, go), InvalidArgument);
}

TEST_CASE("sampling: seeds reproduce, top-k and top-p cut", "[sampling]") {
  at::Tensor logits = at::tensor({1.0f, 3.0f, 2.0f, 0.5f, 2.9f});
  CHECK(Sampler(SamplingOptions{})(logits) == 1);  // greedy
  Sampler a(SamplingOptions{1.0, 0, 1.0, 42}), b(SamplingOptions{1.0, 0, 1.0, 42});
  for (int i = 0; i < 20; ++i) CHECK(a(logits) == b(logits));
  Sampler k2(SamplingOptions{5.0, 2, 1.0, 1});
  for (int i = 0; i < 50; ++i) {
    int64_t id = k2(logits);
    CHECK((id == 1 || id == 4));
  }
  // p = 0.3: the most likely token alone already holds >= 0.3 of the mass.
  at::Tensor kept = keep_top_p(logits, 0.3);
  CHECK(std::isinf(kept[0].item<float>()));
  CHECK(kept[1].item<float>() == 3.0f);
  CHECK(std::isinf(kept[4].item<float>()));
  at::Tensor kept2 = keep_top_p(logits, 0.6);  // needs the top two
  CHECK(kept2[4].item<float>() == 2.9f);
  CHECK(std::isinf(kept2[2].item<float>()));
}

TEST_CASE("HF directories are written as a whole and never over something else", "[checkpoint][io]") {
  namespace fs = std::filesystem;
  const std::string root = flashback::test::temp_dir("hfout");
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  Tokenizer tok = load_tokenizer(ck);
  save_hf_directory(root + "/model", ck.config, ck.tensors, &tok);
  ck.config.rms_norm_eps = 1e-6;  // a second write replaces the first
  save_hf_directory(root + "/model", ck.config, ck.tensors, &tok);
  CHECK(read_checkpoint(root + "/model").config.rms_norm_eps == 1e-6);
  fs::create_directories(root + "/precious");
  std::ofstream(root + "/precious/notes.txt") << "keep me";
  CHECK_THROWS_WITH(save_hf_directory(root + "/precious", ck.config, ck.tensors, &tok),
                    Contains("is not an HF model directory (no config.json); refusing to replace it"));
  CHECK(read_file(root + "/precious/notes.txt") == "keep me");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"model", "precious"});  // no staging directory left behind
}
