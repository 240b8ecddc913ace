// flashback generate: text from a prompt, streamed, or one JSON object.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/dtype.hpp"
#include "flashback/flashback.hpp"
#include "generation_flags.hpp"
#include "token_printer.hpp"

namespace flashback::cli {

namespace {
struct GenerateArgs {
  std::string model, tokenizer, prompt, dtype, kv_dtype, device = "cpu";
  bool keep_quantized = false;
  GenerateOptions generation;
  int threads = 0;
  bool json = false;
};

void run(const GenerateArgs& a) {
  const std::optional<at::ScalarType> kv_dtype = RalmOptions::parse_kv_dtype(a.kv_dtype);  // before the model loads
  init_threads(a.threads);
  PretrainedOptions po;
  po.tokenizer = a.tokenizer;
  po.dtype = parse_dtype(a.dtype);
  po.keep_quantized = a.keep_quantized;
  po.device = parse_device(a.device);
  Pretrained p = load_pretrained(a.model, po);
  const Tokenizer& tok = *p.tokenizer;
  const std::vector<int32_t> ids32 = tok.encode_with_specials(a.prompt);
  const std::vector<int64_t> prompt(ids32.begin(), ids32.end());
  KVCacheStore cache = p.model->make_cache(1, 0, kv_dtype);
  TokenPrinter printer(tok, a.prompt, ids32, a.json ? nullptr : stdout);
  GenerateResult r = generate(*p.model, cache, prompt, a.generation, std::ref(printer), p.marks);
  const std::string& text = printer.finish();
  const double prefill = r.stats.reencode_seconds, decode = r.stats.decode_seconds;
  if (a.json) {
    nlohmann::ordered_json j;
    j["prompt_ids"] = prompt;
    j["ids"] = r.ids;
    j["text"] = text;
    j["prefill_seconds"] = prefill;
    j["decode_seconds"] = decode;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::fprintf(stderr, "[%zu prompt tokens, %zu generated; prefill %.3f s, decode %.2f tok/s]\n", prompt.size(),
                 r.ids.size(), prefill, decode > 0 ? double(r.stats.tokens_decoded) / decode : 0.0);
  }
}
}  // namespace

void add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt (with BOS when the tokenizer adds one)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // later flags win
  cmd->add_option("--model,-m", a->model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_option("--tokenizer,-t", a->tokenizer, kTokenizerHelp);
  cmd->add_option("--prompt,-p", a->prompt, "prompt text")->required();
  add_generation_flags(cmd, a->generation);
  cmd->add_option("--dtype", a->dtype, "auto, fp32, bf16, fp16");
  cmd->add_option("--kv-dtype", a->kv_dtype, ralm_option_help("kv_dtype"));
  cmd->add_flag("--keep-quantized", a->keep_quantized, kKeepQuantizedHelp);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--threads", a->threads, "intra-op threads (default: all cores)");
  cmd->add_flag("--json", a->json, "print one JSON object {prompt_ids, ids, text}");
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
