// flashback generate: text from a prompt, streamed, or one JSON object.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/dtype.hpp"
#include "flashback/flashback.hpp"

namespace flashback::cli {

namespace {
struct GenerateArgs {
  std::string model, tokenizer, prompt, dtype;
  int64_t n = 64;
  double temperature = 0.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false;
};

void run(const GenerateArgs& a) {
  init_threads(a.threads);
  Checkpoint ck = read_checkpoint(a.model);
  Tokenizer tok = load_tokenizer(ck, a.tokenizer);
  LoadOptions lo;
  lo.dtype = parse_dtype(a.dtype);
  const MarkingToken marks = find_marking_tokens(ck, tok);
  LlamaForCausalLM model = load_model(ck, lo);
  ck.tensors.clear();  // release the mapped file

  std::vector<int32_t> ids32 = tok.encode(a.prompt, /*add_bos=*/true);
  std::vector<int64_t> prompt(ids32.begin(), ids32.end());
  GenerateOptions go;
  go.max_new_tokens = a.n;
  go.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  go.marks = marks;
  KVCacheStore cache = model->make_cache(1);

  DecodeStream stream(tok);
  stream.skip(ids32);  // the prompt is printed as given
  std::string text;
  auto on_token = [&](int64_t id) {
    std::string piece = stream.put(static_cast<int32_t>(id));
    text += piece;
    if (!a.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  if (!a.json) {
    std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
    std::fflush(stdout);
  }
  GenerateResult r = generate(*model, cache, prompt, go, on_token);
  std::string tail = stream.flush();
  text += tail;
  if (a.json) {
    nlohmann::ordered_json j;
    j["prompt_ids"] = prompt;
    j["ids"] = r.ids;
    j["text"] = text;
    j["prefill_seconds"] = r.prefill_seconds;
    j["decode_seconds"] = r.decode_seconds;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu prompt tokens, %zu generated; prefill %.3f s, decode %.2f tok/s]\n", prompt.size(),
                 r.ids.size(), r.prefill_seconds, r.decode_seconds > 0 ? r.ids.size() / r.decode_seconds : 0.0);
  }
}
}  // namespace

void add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt (BOS is prepended)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // later flags win
  cmd->add_option("--model,-m", a->model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_option("--tokenizer,-t", a->tokenizer, "tokenizer.model or tokenizer.bin (default: found with the model)");
  cmd->add_option("--prompt,-p", a->prompt, "prompt text")->required();
  cmd->add_option("-n,--max-new-tokens", a->n, "number of tokens to generate")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--temperature", a->temperature, "0 = greedy")->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--top-k", a->top_k, "keep the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "nucleus sampling mass in (0, 1]")->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("--seed", a->seed, "sampling seed");
  cmd->add_option("--dtype", a->dtype, "auto, fp32, bf16, fp16");
  cmd->add_option("--threads", a->threads, "intra-op threads (default: all cores)");
  cmd->add_flag("--json", a->json, "print one JSON object {prompt_ids, ids, text}");
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
