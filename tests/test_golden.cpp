// stories260K against the golden outputs of an independent fp64
// implementation (../shared/models/stories260K/golden.json), loaded from the
// llama2.c .bin, the GGUF file and a directory written by save_hf_directory;
// and the HF transformers fixtures against the logits HF computed.
#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include "flashback/flashback.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::shared;

namespace {

nlohmann::json golden() {
  return nlohmann::json::parse(read_file(shared("models/stories260K/golden.json")));
}

// A copy of stories260K as an HF directory, written once per test run.
std::string converted_dir() {
  static const std::string dir = [] {
    std::string d = flashback::test::temp_dir("golden") + "/stories260K-hf";
    Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
    Tokenizer tok = load_tokenizer(ck);
    save_hf_directory(d, ck.config, ck.tensors, &tok);
    return d;
  }();
  return dir;
}

std::string model_path(const std::string& which) {
  if (which == "bin") return shared("models/stories260K/stories260K.bin");
  if (which == "gguf") return shared("models/stories260K/stories260K.gguf");
  return converted_dir();
}

// Mean NLL (nats) of ids[1:] given the prefix, one full forward.
double mean_nll(LlamaForCausalLMImpl& model, const std::vector<int64_t>& ids) {
  at::Tensor x = at::tensor(ids, at::kLong).view({1, -1});                    // [1, T]
  at::Tensor logp = at::log_softmax(model.forward(x).squeeze(0), -1);        // [T, V]
  at::Tensor target = x.squeeze(0).narrow(0, 1, x.size(1) - 1);              // [T-1]
  at::Tensor picked = logp.narrow(0, 0, x.size(1) - 1).gather(1, target.unsqueeze(1));  // [T-1, 1]
  return -picked.mean().item<double>();
}

}  // namespace

TEST_CASE("stories260K matches the golden outputs from every format", "[golden]") {
  const auto g = golden();
  const auto want_ids = g["greedy_from_bos_64_steps_ids_incl_bos"].get<std::vector<int64_t>>();
  REQUIRE(want_ids.size() == 65);
  for (const std::string which : {"bin", "gguf", "hf"}) {
    DYNAMIC_SECTION("format " << which) {
      Checkpoint ck = read_checkpoint(model_path(which));
      LlamaForCausalLM model = load_model(ck);
      c10::InferenceMode guard;

      // Greedy decoding from BOS with the cache: 64 ids, exactly.
      KVCacheStore cache = model->make_cache(1, 128);
      GenerateOptions go;
      go.max_new_tokens = 64;
      go.stop_at_eos = false;
      GenerateResult r = generate(*model, cache, {1}, go);
      std::vector<int64_t> got = {1};
      got.insert(got.end(), r.ids.begin(), r.ids.end());
      CHECK(got == want_ids);

      // Step-1 top-5 logits within 1e-3.
      at::Tensor logits = model->forward(at::tensor({int64_t(1)}, at::kLong).view({1, 1})).view({-1});  // [V]
      auto [vals, idx] = at::topk(logits, 5);
      for (int k = 0; k < 5; ++k) {
        CHECK(idx[k].item<int64_t>() == g["first_step_top5_logits"][k][0].get<int64_t>());
        CHECK(std::abs(vals[k].item<double>() - g["first_step_top5_logits"][k][1].get<double>()) < 1e-3);
      }

      // Mean NLL on the golden story within 1e-3.
      std::string text = read_file(shared("data/tinystories/tinystories_val_prefix.txt"));
      auto p0 = text.find("\n\n");
      auto p1 = text.find("\n\n", p0 + 2);
      std::string story = text.substr(0, p0) + "\n" + text.substr(p0 + 2, p1 - p0 - 2);
      Tokenizer tok = load_tokenizer(ck);
      std::vector<int32_t> ids32 = tok.encode(story, /*add_bos=*/true);
      const auto& nll = g["tinystories_val_prefix_story0_first_two_paragraphs_joined_by_newline"];
      REQUIRE(static_cast<int64_t>(ids32.size()) == nll["n_tokens_incl_bos"].get<int64_t>());
      std::vector<int64_t> ids(ids32.begin(), ids32.end());
      CHECK(std::abs(mean_nll(*model, ids) - nll["mean_nll_nats"].get<double>()) < 1e-3);
    }
  }
}

TEST_CASE("the converted HF directory reloads to identical weights and logits", "[golden][convert]") {
  LlamaForCausalLM a = load_model(shared("models/stories260K/stories260K.bin"));
  LlamaForCausalLM b = load_model(converted_dir());
  auto ta = model_tensors(*a), tb = model_tensors(*b);
  REQUIRE(ta.size() == tb.size());
  for (const auto& [name, t] : ta) CHECK(at::equal(t, tb.at(name)));
  at::Tensor x = at::randint(0, 512, {2, 33}, at::kLong);
  CHECK(at::equal(a->forward(x), b->forward(x)));
  // The tokenizer written next to it encodes like the original.
  Tokenizer orig = Tokenizer::from_file(shared("models/stories260K/tok512.model"));
  Tokenizer copy = Tokenizer::from_file(converted_dir() + "/tokenizer.model");
  CHECK(copy.encode("Once upon a time, Lily saw a big red ball.") == orig.encode("Once upon a time, Lily saw a big red ball."));
}

TEST_CASE("the GGUF file and the llama2.c file hold the same model", "[golden]") {
  Checkpoint bin = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  Checkpoint gguf = read_checkpoint(shared("models/stories260K/stories260K.gguf"));
  for (const auto& [name, t] : bin.tensors) CHECK(at::equal(t, gguf.tensors.at(name)));
  CHECK(at::equal(bin.tensors.at("model.embed_tokens.weight"), gguf.tensors.at("lm_head.weight")));
}

// ---------------------------------------------------------------- HF fixtures
namespace {
void check_fixture(const std::string& dir, const std::string& reference, double tol) {
  // The references are HF's fp32 computation (of the fp16-rounded weights for the fp16 fixture): computed
  // in fp32 here too, whether or not this LibTorch multiplies fp16 on the CPU (2.x does, 1.13 does not).
  LoadOptions lo;
  lo.dtype = at::kFloat;
  LlamaForCausalLM model = load_model(shared("models/hf-fixtures/" + dir), lo);
  auto ref = load_safetensors(shared("models/hf-fixtures/" + reference));
  c10::InferenceMode guard;
  at::Tensor logits = model->forward(ref.at("input_ids"));  // [2, 40, V]
  INFO(dir << ": max |logit - HF| = " << flashback::test::max_abs_diff(logits, ref.at("logits")));
  CHECK(flashback::test::max_abs_diff(logits, ref.at("logits")) < tol);

  // Greedy continuation of greedy_prompt: HF's greedy_ids are the 30 new tokens.
  at::Tensor prompt = ref.at("greedy_prompt").view({-1});
  at::Tensor want = ref.at("greedy_ids").view({-1});
  std::vector<int64_t> p(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + prompt.numel());
  KVCacheStore cache = model->make_cache();
  GenerateOptions go;
  go.max_new_tokens = want.numel();
  go.stop_at_eos = false;
  GenerateResult r = generate(*model, cache, p, go);
  std::vector<int64_t> w(want.data_ptr<int64_t>(), want.data_ptr<int64_t>() + want.numel());
  CHECK(r.ids == w);
}
}  // namespace

TEST_CASE("HF fixtures: logits and greedy ids match transformers", "[hf]") {
  SECTION("fp32") { check_fixture("tiny-llama-gqa", "tiny-llama-gqa.reference.safetensors", 1e-4); }
  SECTION("sharded") { check_fixture("tiny-llama-gqa-sharded", "tiny-llama-gqa.reference.safetensors", 1e-4); }
  SECTION("fp16 weights") { check_fixture("tiny-llama-gqa-fp16", "tiny-llama-gqa-fp16.reference.safetensors", 1e-4); }
}

TEST_CASE("HF config.json: both spellings of rope_theta and dtype", "[config]") {
  LlamaConfig v5 = LlamaConfig::from_file(shared("models/hf-fixtures/tiny-llama-gqa/config.json"));
  CHECK(v5.num_key_value_heads == 2);
  CHECK(v5.head_dim == 8);
  CHECK(v5.rope_theta == 10000.0);
  CHECK(v5.torch_dtype == "float32");
  CHECK_FALSE(v5.tie_word_embeddings);
  LlamaConfig v4 = LlamaConfig::from_json(
      R"({"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
          "max_position_embeddings": 4096, "torch_dtype": "float16", "rope_scaling": null, "bos_token_id": 1,
          "eos_token_id": [2, 7], "tie_word_embeddings": false, "model_type": "llama"})",
      "llama2-7b/config.json");
  CHECK(v4.head_dim == 128);
  CHECK(v4.rope_theta == 500000.0);
  CHECK(v4.torch_dtype == "float16");
  CHECK(v4.eos_token_ids == std::vector<int64_t>({2, 7}));
  CHECK(v4.num_parameters() == 6738415616);  // Llama-2-7B
  // to_json round-trips.
  LlamaConfig again = LlamaConfig::from_json(v4.to_json(), "again");
  CHECK(again.to_json() == v4.to_json());
}

TEST_CASE("vocabularies embedded in GGUF files tokenize like the tokenizer.model files", "[tokenizer][gguf]") {
  auto lines_of = [](const std::string& path) {
    std::vector<std::string> out;
    std::string text = read_file(path), line;
    size_t i = 0;
    while (i < text.size()) {
      size_t nl = text.find('\n', i);
      if (nl == std::string::npos) nl = text.size();
      out.push_back(text.substr(i, nl - i));
      i = nl + 1;
    }
    return out;
  };
  SECTION("Llama-2 vocabulary (llama-2-tiny-random.gguf), every WikiText-103 test line") {
    Tokenizer gguf = load_tokenizer(read_checkpoint(shared("models/llama-2-tiny-random/llama-2-tiny-random.gguf")));
    Tokenizer model = Tokenizer::from_file(shared("models/llama2-tokenizer/tokenizer.model"));
    REQUIRE(gguf.vocab_size() == 32000);
    for (int32_t id = 0; id < 32000; ++id) REQUIRE(gguf.id_to_piece(id) == model.id_to_piece(id));
    size_t n = 0;
    for (const auto& line : lines_of(shared("data/wikitext-103/wiki.test.raw"))) {
      INFO(line);
      REQUIRE(gguf.encode(line) == model.encode(line));
      ++n;
    }
    CHECK(n > 4000);
  }
  SECTION("stories260K vocabulary: equal wherever tok512's whitespace cleanup has nothing to do") {
    Tokenizer gguf = load_tokenizer(read_checkpoint(shared("models/stories260K/stories260K.gguf")));
    Tokenizer model = Tokenizer::from_file(shared("models/stories260K/tok512.model"));
    size_t n = 0;
    for (const auto& line : lines_of(shared("data/tinystories/tinystories_val_prefix.txt"))) {
      if (line.empty() || line.front() == ' ' || line.back() == ' ' || line.find("  ") != std::string::npos) continue;
      INFO(line);
      REQUIRE(gguf.encode(line) == model.encode(line));
      ++n;
    }
    CHECK(n > 1000);
    // GGUF does not record tok512's remove_extra_whitespaces: runs of spaces differ, as documented.
    CHECK(gguf.encode("a  b") != model.encode("a  b"));
  }
}
