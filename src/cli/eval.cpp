// flashback eval: token-level perplexity, In-Context-RALM style.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/report.hpp"
#include "ralm_common.hpp"

namespace flashback::cli {

namespace {
struct Args : RalmArgs {
  std::string text;
  int64_t max_tokens = 0;
};

void run(const Args& a) {
  const ContextMode mode = parse_context_mode(a.mode);
  RalmSetup s = setup_ralm(a, {mode});
  LlamaForCausalLMImpl& model = *s.pretrained.model;
  const std::string text = read_file(a.text);
  std::vector<int32_t> ids32 = s.pretrained.tokenizer->encode_with_specials(text);
  if (a.max_tokens > 0 && static_cast<int64_t>(ids32.size()) > a.max_tokens + 1) ids32.resize(a.max_tokens + 1);
  if (ids32.size() < 2) throw FormatError(a.text, "the text has no tokens to score");
  const std::vector<int64_t> ids(ids32.begin(), ids32.end());

  KVCacheStore cache = make_context_cache(model, a.options);
  auto ctx = make_context(mode, model, cache, s.pretrained.marks, a.options);
  auto last = std::chrono::steady_clock::now();
  auto progress = [&](int64_t done, int64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - last < std::chrono::milliseconds(500)) return;
    last = now;
    std::fprintf(stderr, "\reval %s: %lld / %lld tokens (%.0f%%)", a.mode.c_str(), (long long)done, (long long)total,
                 100.0 * double(done) / double(total));
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
  EvalResult r = evaluate(*ctx, *s.documents, ids, progress);
  const ContextOptions& co = ctx->options();
  if (a.json) {
    nlohmann::ordered_json j;
    j["mode"] = context_mode_name(mode);
    j["marks"] = co.marks;
    j["kv_reuse"] = co.kv_reuse;
    j["max_length"] = co.max_length;
    j["stride"] = co.stride;
    const nlohmann::ordered_json result = nlohmann::ordered_json::parse(to_json(r));
    for (const auto& [key, value] : result.items()) j[key] = value;
    j["stats"].erase("reencoded_per_place");
    std::cout << j.dump() << "\n";
  } else {
    std::printf("%s%s: ppl %.4f (mean nll %.6f over %lld tokens)\n", context_mode_name(mode), co.marks ? "+marks" : "",
                r.ppl(), r.nll(), (long long)r.tokens);
  }
}
}  // namespace

void add_eval(CLI::App& app) {
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("eval", "Perplexity with retrieval every s tokens (In-Context RALM protocol)");
  add_ralm_flags(cmd, *a);
  cmd->add_option("--text", a->text, "text file to score")->required();
  cmd->add_option("--max-tokens", a->max_tokens, "score only the first N tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
