// LoRA and trainable token rows: PEFT's fixture reproduced, a fresh adapter is
// a no-op, merge/unmerge agree, only the adapter trains, adapters round-trip
// through PEFT's file layout, and bad adapters fail with a clear error.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "flashback/checkpoint.hpp"
#include "flashback/llama.hpp"
#include "flashback/lora.hpp"
#include "flashback/peft.hpp"
#include "test_util.hpp"

using namespace flashback;
using flashback::test::lora_all_targets;
using flashback::test::max_abs_diff;
using flashback::test::perturb_adapter;
using flashback::test::shared;
namespace fs = std::filesystem;

namespace {

LlamaForCausalLM random_model(uint64_t seed, bool tied = false) {
  LlamaForCausalLM m(flashback::test::tiny_config(32, 2, 4, 2, 61, 64, tied));
  m->init_random(seed);
  return m;
}

std::string fixture(const std::string& name) { return shared("models/hf-fixtures/" + name); }

}  // namespace

TEST_CASE("PEFT fixture: LoRA + trainable token rows reproduce HF's logits", "[lora][hf]") {
  auto ref = load_safetensors(fixture("tiny-llama-gqa-marks-lora.reference.safetensors"));
  for (bool merge : {false, true}) {
    LlamaForCausalLM model = load_model(fixture("tiny-llama-gqa-marks"));
    load_adapter(*model, fixture("tiny-llama-gqa-marks-lora"), merge);
    CHECK(lora_config(*model).r == 8);
    CHECK(lora_config(*model).trainable_token_indices == std::vector<int64_t>({512, 513}));
    c10::InferenceMode guard;
    at::Tensor logits = model->forward(ref.at("input_ids"));  // [2, 40, 514]
    INFO("merged=" << merge << " max |logit - HF| = " << max_abs_diff(logits, ref.at("logits")));
    CHECK(max_abs_diff(logits, ref.at("logits")) < 1e-4);
  }
  // The input does use the mark rows, and without the adapter the logits differ.
  CHECK((ref.at("input_ids") >= 512).any().item<bool>());
  LlamaForCausalLM base = load_model(fixture("tiny-llama-gqa-marks"));
  c10::InferenceMode guard;
  CHECK(max_abs_diff(base->forward(ref.at("input_ids")), ref.at("logits")) > 1e-2);
}

TEST_CASE("a fresh adapter is a no-op; merge and unmerge agree", "[lora]") {
  const bool tied = GENERATE(false, true);  // a tied head reads the adapted rows too
  INFO("tied=" << tied);
  LlamaForCausalLM m = random_model(1, tied);
  at::Tensor x = at::randint(0, 61, {2, 17}, at::kLong);
  x.index_put_({0, 3}, 59);
  x.index_put_({1, 8}, 60);
  at::Tensor before;
  {
    c10::InferenceMode g;
    before = m->forward(x);
  }
  add_lora(*m, lora_all_targets(61));
  m->eval();
  c10::InferenceMode g;
  CHECK(at::equal(m->forward(x), before));  // B = 0 and the token rows start as copies

  perturb_adapter(*m, 7);
  at::Tensor unmerged = m->forward(x);
  CHECK(max_abs_diff(unmerged, before) > 1e-3);
  merge_adapter(*m);
  CHECK(max_abs_diff(m->forward(x), unmerged) < 1e-5);
  unmerge_adapter(*m);
  CHECK(max_abs_diff(m->forward(x), unmerged) < 1e-5);
  set_adapter_enabled(*m, false);
  CHECK(max_abs_diff(m->forward(x), before) < 1e-5);  // disabled: the base model again
  set_adapter_enabled(*m, true);
  merge_and_unload(*m);
  CHECK_FALSE(has_lora(*m));
  CHECK(max_abs_diff(m->forward(x), unmerged) < 1e-5);
  for (auto& item : m->named_parameters()) CHECK(item.key().find("lora") == std::string::npos);
}

TEST_CASE("LoRA init: A Kaiming-uniform, B zero, scaling alpha/r, dropout only in training", "[lora]") {
  LlamaForCausalLM m = random_model(2);
  LoraConfig c = lora_all_targets(61, 8);
  c.dropout = 0.5;
  add_lora(*m, c);
  Linear& q_proj = m->model->layer(0).self_attn->q_proj;
  auto* q = dynamic_cast<LoraAdapter*>(q_proj->adapter.get());
  REQUIRE(q != nullptr);
  CHECK(q->scaling == Approx(1.0));
  CHECK(q->lora_A->weight.sizes() == at::IntArrayRef({8, 32}));
  CHECK(q->lora_B->weight.sizes() == at::IntArrayRef({32, 8}));
  CHECK(at::equal(q->lora_B->weight, at::zeros_like(q->lora_B->weight)));
  const double bound = 1.0 / std::sqrt(32.0);
  CHECK(q->lora_A->weight.abs().max().item<double>() <= bound);
  CHECK(q->lora_A->weight.std().item<double>() == Approx(bound / std::sqrt(3.0)).epsilon(0.2));
  // The base projection keeps its weight and its name; A and B sit beside it under PEFT's names.
  CHECK(q_proj->weight.data_ptr() == m->named_parameters()["model.layers.0.self_attn.q_proj.weight"].data_ptr());
  CHECK(q->lora_A->weight.data_ptr() == m->named_parameters()["model.layers.0.self_attn.q_proj.lora_A.weight"].data_ptr());

  perturb_adapter(*m, 3);
  at::Tensor x = at::randint(0, 59, {1, 9}, at::kLong);
  m->train();
  at::Tensor a = m->forward(x), b = m->forward(x);
  CHECK(max_abs_diff(a, b) > 1e-6);  // dropout is random in training
  m->eval();
  CHECK(at::equal(m->forward(x), m->forward(x)));
}

TEST_CASE("only the adapter trains: gradients reach LoRA and the mark rows, nothing else", "[lora][train]") {
  LlamaForCausalLM m = random_model(3);
  add_lora(*m, lora_all_targets(61));
  mark_only_adapter_trainable(*m);
  m->train();
  at::Tensor x = at::randint(0, 59, {2, 12}, at::kLong);
  x.index_put_({0, 2}, 59);
  x.index_put_({1, 5}, 60);
  at::Tensor loss = m->forward(x).logsumexp(-1).mean();
  loss.backward();
  int trainable = 0;
  for (auto& item : m->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    const bool adapter = name.find("lora_") != std::string::npos || name.find("trainable_tokens_delta") != std::string::npos;
    INFO(name);
    CHECK(p.requires_grad() == adapter);
    if (adapter) {
      ++trainable;
      REQUIRE(p.grad().defined());
      // A's gradient is zero while B is zero; B's and the rows' are not.
      if (name.find("lora_A") == std::string::npos) {
        const double g = p.grad().abs().sum().item<double>();
        CHECK(g > 0);
      }
    } else {
      CHECK_FALSE(p.grad().defined());
    }
  }
  CHECK(trainable == 2 * 2 * 7 + 1);
}

TEST_CASE("adapters round-trip through PEFT's file layout, atomically replaced", "[lora][io]") {
  const std::string dir = flashback::test::temp_dir("adapter") + "/ad";
  LlamaForCausalLM a = random_model(4);
  add_lora(*a, lora_all_targets(61));
  perturb_adapter(*a, 5);
  save_adapter(*a, dir, "random-base");
  CHECK(fs::exists(dir + "/adapter_config.json"));
  CHECK(fs::exists(dir + "/adapter_model.safetensors"));
  auto t = load_safetensors(dir + "/adapter_model.safetensors");
  CHECK(t.count("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
  CHECK(t.at("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta").sizes() ==
        at::IntArrayRef({2, 32}));
  CHECK(t.size() == 2 * 2 * 7 + 1);

  LlamaForCausalLM b = random_model(4);
  load_adapter(*b, dir);
  c10::InferenceMode g;
  at::Tensor x = at::randint(0, 61, {1, 20}, at::kLong);
  CHECK(at::equal(a->forward(x), b->forward(x)));
  // Saving again replaces the directory as a whole; no temporaries are left.
  save_adapter(*a, dir);
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(fs::path(dir).parent_path())) entries += e.path().filename() != "ad" ? 1 : 0;
  CHECK(entries == 0);
}

TEST_CASE("bad adapters fail with a clear error naming the file", "[lora][errors]") {
  const std::string root = flashback::test::temp_dir("badadapter");
  LlamaForCausalLM a = random_model(6);
  add_lora(*a, lora_all_targets(61, 4));
  save_adapter(*a, root + "/good");
  auto expect_error = [](const std::function<void()>& fn, const std::string& part) {
    try {
      fn();
      FAIL("no error; expected one mentioning " << part);
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
  };
  // Another architecture: the PEFT fixture (hidden 64) on a hidden-32 model.
  expect_error([&] { LlamaForCausalLM m = random_model(6); load_adapter(*m, fixture("tiny-llama-gqa-marks-lora")); },
               "outside the model's vocabulary");
  expect_error([&] {
    LlamaForCausalLM m(flashback::test::tiny_config(48, 3, 8, 2, 600, 64));
    load_adapter(*m, fixture("tiny-llama-gqa-marks-lora"));
  }, "another architecture");
  // A config whose vocabulary lacks the marks: the base without them.
  expect_error([&] { LlamaForCausalLM m = load_model(fixture("tiny-llama-gqa")); load_adapter(*m, fixture("tiny-llama-gqa-marks-lora")); },
               "adapter_config.json: trainable token 512 is outside");
  // Rank in the config disagrees with the tensors.
  fs::copy(root + "/good", root + "/rank", fs::copy_options::recursive);
  {
    std::ifstream in(root + "/rank/adapter_config.json");
    std::string s((std::istreambuf_iterator<char>(in)), {});
    s.replace(s.find("\"r\": 4"), 6, "\"r\": 8");
    std::ofstream(root + "/rank/adapter_config.json") << s;
  }
  expect_error([&] { LlamaForCausalLM m = random_model(6); load_adapter(*m, root + "/rank"); }, "adapter_model.safetensors");
  // Not a LoRA adapter; not a directory; missing weights.
  fs::create_directories(root + "/ia3");
  std::ofstream(root + "/ia3/adapter_config.json") << R"({"peft_type": "IA3", "target_modules": ["k_proj"]})";
  expect_error([&] { LlamaForCausalLM m = random_model(6); load_adapter(*m, root + "/ia3"); }, "peft_type");
  expect_error([&] { LlamaForCausalLM m = random_model(6); load_adapter(*m, root + "/nowhere"); }, "nowhere");
  fs::create_directories(root + "/noweights");
  fs::copy(root + "/good/adapter_config.json", root + "/noweights/adapter_config.json");
  expect_error([&] { LlamaForCausalLM m = random_model(6); load_adapter(*m, root + "/noweights"); },
               "adapter_model.safetensors: missing");
  // A model that already has an adapter; a config with a bad rank.
  expect_error([&] { load_adapter(*a, root + "/good"); }, "already has an adapter");
  expect_error([&] { LlamaForCausalLM m = random_model(6); LoraConfig c; c.r = 0; add_lora(*m, c); }, "rank");
  expect_error([&] { LlamaForCausalLM m = random_model(6); LoraConfig c; c.target_modules = {"wq"}; add_lora(*m, c); }, "wq");
}
