// flashback ralm: retrieval-augmented generation, a retrieval every s tokens.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/batching.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/report.hpp"
#include "ralm_common.hpp"
#include "generation_flags.hpp"
#include "token_printer.hpp"

namespace flashback::cli {

namespace {
struct Args : RalmArgs {
  std::string prompt, prompts_file;
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

// One generation's report: a JSON line, or the stats line (and with
// --verbose the retrievals) after the text. `prompt_index` >= 0 in a batch.
void report(const Args& a, ContextMode mode, const ContextOptions& o, const std::vector<int64_t>& prompt,
            const GenerateResult& r, const std::string& text, const std::vector<RetrievalRecord>& history,
            int64_t prompt_index = -1) {
  if (a.json) {
    nlohmann::ordered_json j;
    if (prompt_index >= 0) j["prompt_index"] = prompt_index;
    j["mode"] = context_mode_name(mode);
    j["marks"] = o.marks;
    j["kv_reuse"] = o.kv_reuse;
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
                 context_mode_name(mode), o.marks ? "+marks" : "", r.ids.size(), (long long)r.stats.retrievals,
                 (long long)r.stats.tokens_reencoded, (long long)r.stats.tokens_decoded, r.stats.retrieve_seconds,
                 r.stats.reencode_seconds, r.stats.decode_seconds);
    if (a.verbose) print_retrievals(history);
  }
}

std::vector<int64_t> encode_prompt(const Tokenizer& tok, const std::string& prompt) {
  const std::vector<int32_t> ids = tok.encode_with_specials(prompt);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

const std::vector<RetrievalRecord>& history_of(const RetrievedDocuments* retrieved, const ContextOptions& o) {
  static const std::vector<RetrievalRecord> kNone;
  return retrieved && o.retrieves() ? retrieved->history() : kNone;
}

// One generation in one mode: streams the text (or prints one JSON line) and
// returns the stats.
ContextStats run_mode(const Args& a, ContextMode mode, RalmSetup& s, bool header) {
  LlamaForCausalLMImpl& model = *s.pretrained.model;
  const Tokenizer& tok = *s.pretrained.tokenizer;
  KVCacheStore cache = make_context_cache(model, a.options);
  auto ctx = make_context(mode, model, cache, s.pretrained.marks, a.options);
  const std::vector<int64_t> prompt = encode_prompt(tok, a.prompt);
  if (!a.json && header) std::printf("== %s%s\n", context_mode_name(mode), ctx->options().marks ? " + marks" : "");
  TokenPrinter printer(tok, a.prompt, {prompt.begin(), prompt.end()}, a.json ? nullptr : stdout);
  if (s.retrieved) s.retrieved->clear_history();
  GenerateResult r = generate(*ctx, *s.documents, prompt, a.generation, std::ref(printer));
  const std::string& text = printer.finish();
  report(a, mode, ctx->options(), prompt, r, text, history_of(s.retrieved, ctx->options()));
  return r.stats;
}

// --prompts-file: every prompt at once as batched streams (batching.hpp), each
// with its own context and retrievals; the texts print when all are done.
// Returns the seconds the batch took.
double run_batch(const Args& a, ContextMode mode, RalmSetup& s, const std::vector<std::string>& prompts) {
  LlamaForCausalLMImpl& model = *s.pretrained.model;
  const Tokenizer& tok = *s.pretrained.tokenizer;
  std::vector<std::unique_ptr<DocumentSource>> sources;
  std::vector<RetrievedDocuments*> retrieved;
  std::vector<DocumentSource*> source_ptrs;
  std::vector<std::vector<int64_t>> ids;
  for (const std::string& p : prompts) {
    if (s.retriever) {
      auto d = std::make_unique<RetrievedDocuments>(*s.retriever, tok, a.options);
      d->keep_history(a.json || a.verbose);
      retrieved.push_back(d.get());
      sources.push_back(std::move(d));
    } else {
      retrieved.push_back(nullptr);
      sources.push_back(std::make_unique<NoDocuments>());
    }
    source_ptrs.push_back(sources.back().get());
    ids.push_back(encode_prompt(tok, p));
  }
  const ContextOptions o = ContextOptions::resolve(mode, a.options, model.config().max_position_embeddings);
  const auto t0 = std::chrono::steady_clock::now();
  const BatchGeneration b =
      generate_batch(model, mode, s.pretrained.marks, a.options, source_ptrs, ids, a.generation);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!a.json)
      std::printf("== %s%s, prompt %zu of %zu\n", context_mode_name(mode), o.marks ? " + marks" : "", i + 1,
                  prompts.size());
    TokenPrinter printer(tok, prompts[i], {ids[i].begin(), ids[i].end()}, a.json ? nullptr : stdout);
    for (int64_t t : b.results[i].ids) printer(t);
    report(a, mode, o, ids[i], b.results[i], printer.finish(), history_of(retrieved[i], o), static_cast<int64_t>(i));
  }
  if (!a.json)
    std::fprintf(stderr, "[%s: %zu prompts as batched streams in %.3f s: %lld shared forwards, at most %lld sequences each]\n",
                 context_mode_name(mode), prompts.size(), seconds, (long long)b.stats.forwards,
                 (long long)b.stats.max_sequences);
  return seconds;
}

std::vector<std::string> read_prompts(const std::string& path) {
  std::vector<std::string> prompts;
  const std::string text = read_file(path);
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) prompts.push_back(line);
    start = end + 1;
  }
  if (prompts.empty()) throw InvalidArgument(path + ": no prompts (one per line, blank lines skipped)");
  return prompts;
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
  if (!a.prompts_file.empty()) {
    const std::vector<std::string> prompts = read_prompts(a.prompts_file);
    std::vector<double> seconds;
    for (ContextMode mode : modes) seconds.push_back(run_batch(a, mode, s, prompts));
    if (modes.size() > 1 && !a.json) {
      std::printf("\n%-8s %12s %9s\n", "mode", "batch s", "speedup");
      for (size_t i = 0; i < modes.size(); ++i)
        std::printf("%-8s %12.3f %8.2fx\n", context_mode_name(modes[i]), seconds[i],
                    seconds[0] / std::max(seconds[i], 1e-12));
    }
    return;
  }
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
  CLI::Option* prompt = cmd->add_option("--prompt,-p", a->prompt, "prompt text (with BOS when the tokenizer adds one)");
  CLI::Option* prompts = cmd->add_option("--prompts-file", a->prompts_file,
                                         "a file of prompts, one per line: generated together as batched streams "
                                         "(one forward per step for all; each prompt's ids are its own run's)");
  cmd->callback([a, prompt, prompts] {
    if (!*prompt == !*prompts) throw InvalidArgument("ralm: give --prompt or --prompts-file (one of them)");
    run(*a);
  });
  add_generation_flags(cmd, a->generation);
  cmd->add_flag("-v,--verbose", a->verbose, "list each retrieval (position, titles, scores) after each mode's text");
}

}  // namespace flashback::cli
