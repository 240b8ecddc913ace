// flashback ralm: retrieval-augmented generation, a retrieval every s tokens.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "ralm_common.hpp"

namespace flashback::cli {

namespace {
struct Args : RalmArgs {
  std::string prompt;
  int64_t n = 64;
  double temperature = 0.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
};

std::vector<ContextMode> parse_modes(const std::string& list) {
  std::vector<ContextMode> modes;
  size_t i = 0;
  while (i <= list.size()) {
    size_t c = list.find(',', i);
    if (c == std::string::npos) c = list.size();
    modes.push_back(parse_context_mode(list.substr(i, c - i)));
    i = c + 1;
  }
  return modes;
}

// One generation in one mode: streams the text (or prints one JSON line) and
// returns the stats.
ContextStats run_mode(const Args& a, ContextMode mode, RalmModel& m, Retriever* retriever, bool header) {
  DocumentSource source(mode == ContextMode::None ? nullptr : retriever, m.tokenizer, ralm_options(a));
  ContextOptions co = context_options(a);
  if (mode == ContextMode::None) co.marks = false;

  std::vector<int32_t> ids32 = m.tokenizer.encode(a.prompt, /*add_bos=*/true);
  std::vector<int64_t> prompt(ids32.begin(), ids32.end());
  KVCacheStore cache = m.model->make_cache(1, co.max_length);
  Sampler sampler(SamplingOptions{a.temperature, a.top_k, a.top_p, a.seed});
  DecodeStream stream(m.tokenizer);
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
    if (header) std::printf("== %s%s\n", context_mode_name(mode), co.marks ? " + marks" : "");
    std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
    std::fflush(stdout);
  }
  const std::vector<int64_t> stop = m.model->config().eos_token_ids;
  RalmResult r = with_context(mode, *m.model, cache, m.marks, co, [&](auto& ctx) {
    return ralm_generate(ctx, source, prompt, a.n, sampler, stop, on_token);
  });
  text += stream.flush();
  nlohmann::ordered_json stats = stats_json(r.stats);
  if (a.json) {
    nlohmann::ordered_json j;
    j["mode"] = context_mode_name(mode);
    j["marks"] = co.marks;
    j["kv_reuse"] = co.kv_reuse;
    j["prompt_ids"] = prompt;
    j["ids"] = r.ids;
    j["text"] = text;
    j["stats"] = stats;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr,
                 "[%s%s: %zu tokens, %lld retrievals, %lld re-encoded, %lld decoded; retrieve %.3f s, re-encode %.3f s, "
                 "decode %.3f s]\n",
                 context_mode_name(mode), co.marks ? "+marks" : "", r.ids.size(), (long long)r.stats.retrievals,
                 (long long)r.stats.tokens_reencoded, (long long)r.stats.tokens_decoded, r.stats.retrieve_seconds,
                 r.stats.reencode_seconds, r.stats.decode_seconds);
  }
  return r.stats;
}

void run(const Args& a) {
  const std::vector<ContextMode> modes = parse_modes(a.mode);
  const bool retrieves = std::any_of(modes.begin(), modes.end(), [](ContextMode m) { return m != ContextMode::None; });
  if (retrieves && a.index.empty()) throw InvalidArgument("--index is required unless --mode none");
  RalmModel m = load_ralm_model(a);
  std::unique_ptr<Retriever> retriever;
  if (retrieves) retriever = open_retriever(a.index, a.encoder_model, a.forbidden_titles);
  std::vector<ContextStats> stats;
  for (ContextMode mode : modes) stats.push_back(run_mode(a, mode, m, retriever.get(), modes.size() > 1));
  if (modes.size() < 2 || a.json) return;
  // Side by side: the work each mode did and its time against the first mode.
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
}  // namespace

void add_ralm(CLI::App& app) {
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("ralm", "Retrieval-augmented generation (FlashBack append, prepend or none)");
  add_ralm_flags(cmd, *a);
  cmd->get_option("--mode")->description("append (FlashBack), prepend (In-Context RALM), none, or a comma list run side by side");
  cmd->add_option("--prompt,-p", a->prompt, "prompt text (BOS is prepended)")->required();
  cmd->add_option("-n,--max-new-tokens", a->n, "number of tokens to generate")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--temperature", a->temperature, "0 = greedy")->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--top-k", a->top_k, "keep the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "nucleus sampling mass in (0, 1]")->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("--seed", a->seed, "sampling seed");
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
