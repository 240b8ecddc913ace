// flashback ralm: retrieval-augmented generation, a retrieval every s tokens.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/report.hpp"
#include "ralm_common.hpp"
#include "generation_flags.hpp"
#include "token_printer.hpp"

namespace flashback::cli {

namespace {
struct Args : RalmArgs {
  std::string prompt;
  GenerateOptions generation;
  bool verbose = false;
};


void print_retrievals(const std::vector<RetrievalRecord>& history) {
  for (const RetrievalRecord& r : history) {
    std::fprintf(stderr, "  retrieval @%lld:", (long long)r.position);
    if (r.passages.empty()) std::fprintf(stderr, " (nothing)");
    for (const Passage& p : r.passages)
      std::fprintf(stderr, " \"%s\" (%.2f)", p.title.empty() ? "(untitled)" : p.title.c_str(), p.score);
    std::fprintf(stderr, "\n");
  }
}

// One generation in one mode: streams the text (or prints one JSON line) and
// returns the stats.
ContextStats run_mode(const Args& a, ContextMode mode, RalmSetup& s, bool header) {
  LlamaForCausalLMImpl& model = *s.pretrained.model;
  const Tokenizer& tok = *s.pretrained.tokenizer;
  KVCacheStore cache = make_context_cache(model, a.options);
  auto ctx = make_context(mode, model, cache, s.pretrained.marks, a.options);
  const std::vector<int32_t> ids32 = tok.encode_with_specials(a.prompt);
  const std::vector<int64_t> prompt(ids32.begin(), ids32.end());
  if (!a.json && header) std::printf("== %s%s\n", context_mode_name(mode), ctx->options().marks ? " + marks" : "");
  TokenPrinter printer(tok, a.prompt, ids32, a.json ? nullptr : stdout);
  if (s.retrieved) s.retrieved->clear_history();
  GenerateResult r = generate(*ctx, *s.documents, prompt, a.generation, std::ref(printer));
  const std::string& text = printer.finish();
  static const std::vector<RetrievalRecord> kNone;
  const std::vector<RetrievalRecord>& history = s.retrieved && ctx->options().retrieves() ? s.retrieved->history() : kNone;
  if (a.json) {
    nlohmann::ordered_json j;
    j["mode"] = context_mode_name(mode);
    j["marks"] = ctx->options().marks;
    j["kv_reuse"] = ctx->options().kv_reuse;
    j["prompt_ids"] = prompt;
    j["ids"] = r.ids;
    j["text"] = text;
    j["stats"] = nlohmann::ordered_json::parse(to_json(r.stats));
    j["retrievals"] = nlohmann::ordered_json::parse(to_json(history));
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::fprintf(stderr,
                 "[%s%s: %zu tokens, %lld retrievals, %lld re-encoded, %lld decoded; retrieve %.3f s, re-encode %.3f s, "
                 "decode %.3f s]\n",
                 context_mode_name(mode), ctx->options().marks ? "+marks" : "", r.ids.size(),
                 (long long)r.stats.retrievals, (long long)r.stats.tokens_reencoded, (long long)r.stats.tokens_decoded,
                 r.stats.retrieve_seconds, r.stats.reencode_seconds, r.stats.decode_seconds);
    if (a.verbose) print_retrievals(history);
  }
  return r.stats;
}

// Side by side: the work each mode did and its time against the first mode.
void print_comparison(const std::vector<ContextMode>& modes, const std::vector<ContextStats>& stats) {
  auto total = [](const ContextStats& s) { return s.retrieve_seconds + s.reencode_seconds + s.decode_seconds; };
  std::printf("\n%-8s %10s %12s %10s %10s %10s %10s %9s\n", "mode", "retrievals", "re-encoded", "decoded",
              "retrieve s", "encode s", "decode s", "speedup");
  for (size_t i = 0; i < modes.size(); ++i) {
    const ContextStats& s = stats[i];
    std::printf("%-8s %10lld %12lld %10lld %10.3f %10.3f %10.3f %8.2fx\n", context_mode_name(modes[i]),
                (long long)s.retrievals, (long long)s.tokens_reencoded, (long long)s.tokens_decoded, s.retrieve_seconds,
                s.reencode_seconds, s.decode_seconds, total(stats[0]) / std::max(total(s), 1e-12));
  }
}

void run(const Args& a) {
  const std::vector<ContextMode> modes = parse_context_modes(a.mode);
  RalmSetup s = setup_ralm(a, modes);
  if (s.retrieved) s.retrieved->keep_history(a.json || a.verbose);
  std::vector<ContextStats> stats;
  for (ContextMode mode : modes) stats.push_back(run_mode(a, mode, s, modes.size() > 1));
  if (modes.size() > 1 && !a.json) print_comparison(modes, stats);
}
}  // namespace

void add_ralm(CLI::App& app) {
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("ralm", "Retrieval-augmented generation (FlashBack append, prepend or none)");
  add_ralm_flags(cmd, *a);
  cmd->get_option("--mode")->description("append (FlashBack), prepend (In-Context RALM), none, or a comma list run side by side");
  cmd->add_option("--prompt,-p", a->prompt, "prompt text (with BOS when the tokenizer adds one)")->required();
  add_generation_flags(cmd, a->generation);
  cmd->add_flag("-v,--verbose", a->verbose, "list each retrieval (position, titles, scores) after each mode's text");
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
