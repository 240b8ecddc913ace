// flashback bench ralm: the paper's runtime test (its test_speed.py) on a
// model of a given config with random weights and random token ids.
//
//   start from `init` input tokens; generate greedily until the sequence
//   (input + generated) reaches `total - doc`; every `stride` tokens a new
//   random document of `doc` tokens is placed by the mode:
//     append   FlashBack: after the input, between the marks; the input's KV
//              cache is kept, only the recent tokens + the block are encoded
//     prepend  In-Context RALM: before the input; everything is re-encoded
//
// It times the generation loop users run (generate.hpp) with a
// RandomDocuments source. Per mode: seconds, tokens generated / re-encoded /
// decoded, and the time split (retrieve = making the random document,
// re-encode, decode, other = sampling, cache surgery and bookkeeping). Modes
// alternate within each repeat; medians over repeats; the speedup is
// median(prepend)/median(append).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "bench_common.hpp"
#include "bench_subcommands.hpp"
#include "commands.hpp"
#include "flashback/flashback.hpp"

namespace flashback::cli {

namespace {

using bench::Clock;
using bench::median;
using bench::since;

struct BenchRalmArgs {
  std::string config = bench::kDefaultConfig;
  std::string model;  // a checkpoint instead of random weights of `config`
  std::string dtype = "fp32";
  std::string device = "cpu";
  std::string modes = "append,prepend";
  int64_t init = 1536, total = 2048, stride = 16, doc = 128;
  int repeats = 1, threads = 0;
  uint64_t seed = 0;
  bool json = false;

  int64_t to_generate() const { return total - doc - init; }
  const std::string& measured() const { return model.empty() ? config : model; }
  // The layout holds at most total + 2 (marks) positions: the window never slides.
  int64_t capacity() const { return total + 2 + stride; }
};

struct RunResult {
  double seconds = 0;
  GenerateResult generation;
  int64_t rss_after_first_place = 0, rss_at_end = 0;  // bytes
};

// One run of `mode` (append with the marks, as FlashBack; prepend without,
// as In-Context RALM). Token ids and documents avoid the last two ids, which
// play the marks.
RunResult run_mode(ContextMode mode, LlamaForCausalLMImpl& model, KVCacheStore& cache, const BenchRalmArgs& a,
                   uint64_t seed) {
  const int64_t V = model.config().vocab_size;
  RalmOptions o;
  o.stride = a.stride;
  o.max_length = a.capacity();
  o.doc_tokens = a.doc;  // the room kept below the input (doc_positions before) fits the bench's documents
  o.window_keep = 1.0;
  o.marks = mode == ContextMode::Append;
  auto ctx = make_context(mode, model, cache, MarkingToken(V), o);
  RandomDocuments documents(a.doc, 1, V - 2, seed);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  at::Tensor init = at::randint(1, V - 2, {a.init}, gen, at::kLong);  // [init]
  GenerateOptions g;
  g.max_new_tokens = a.to_generate();
  g.stop_at_eos = false;
  RunResult r;
  auto first_token = [&](int64_t) {
    if (!r.rss_after_first_place) r.rss_after_first_place = bench::rss_bytes();
    return true;
  };
  const auto t0 = Clock::now();
  r.generation = generate(*ctx, documents, std::vector<int64_t>(init.data_ptr<int64_t>(), init.data_ptr<int64_t>() + a.init),
                          g, first_token);
  r.seconds = since(t0);
  r.rss_at_end = bench::rss_bytes();
  return r;
}

// Medians over the repeats of one mode.
nlohmann::ordered_json summarize(ContextMode mode, const std::vector<RunResult>& rs) {
  auto pick = [&](auto f) {
    std::vector<double> v;
    for (const auto& r : rs) v.push_back(f(r));
    return median(v);
  };
  auto model_seconds = [](const RunResult& r) { return r.generation.stats.reencode_seconds + r.generation.stats.decode_seconds; };
  const ContextStats& s0 = rs.front().generation.stats;
  nlohmann::ordered_json e;
  e["mode"] = context_mode_name(mode);
  e["seconds"] = pick([](const RunResult& r) { return r.seconds; });
  std::vector<double> all;
  for (const auto& r : rs) all.push_back(r.seconds);
  e["seconds_all"] = all;
  e["generated"] = rs.front().generation.ids.size();
  e["retrievals"] = s0.retrievals;
  e["tokens_reencoded"] = s0.tokens_reencoded;
  e["first_place_tokens"] = s0.reencoded_per_place.empty() ? 0 : s0.reencoded_per_place.front();
  e["tokens_decoded"] = s0.tokens_decoded;
  e["retrieve_seconds"] = pick([](const RunResult& r) { return r.generation.stats.retrieve_seconds; });
  e["reencode_seconds"] = pick([](const RunResult& r) { return r.generation.stats.reencode_seconds; });
  e["decode_seconds"] = pick([](const RunResult& r) { return r.generation.stats.decode_seconds; });
  e["other_seconds"] = pick([&](const RunResult& r) {
    return r.seconds - r.generation.stats.retrieve_seconds - model_seconds(r);
  });
  // Per run, then the median (the split columns are medians taken one by
  // one, so their sum need not equal the median of the totals).
  e["model_share"] = pick([&](const RunResult& r) { return r.seconds > 0 ? model_seconds(r) / r.seconds : 0.0; });
  // Growth of the resident set from the first retrieval to the end of
  // generation (largest over repeats): the cache is preallocated, so
  // nothing should grow with the tokens.
  int64_t growth = 0;
  for (const auto& r : rs) growth = std::max(growth, r.rss_at_end - r.rss_after_first_place);
  e["rss_growth_during_generation_bytes"] = growth;
  return e;
}

void print_table(const nlohmann::ordered_json& j, const BenchRalmArgs& a) {
  std::printf("bench ralm  %s  %s, %lld params, init %lld, total %lld, stride %lld, doc %lld, %d threads, %d repeat(s)\n",
              a.measured().c_str(), a.dtype.c_str(), (long long)j["parameters"].get<int64_t>(), (long long)a.init,
              (long long)a.total, (long long)a.stride, (long long)a.doc, j["threads"].get<int>(), a.repeats);
  std::printf("%-8s %9s %9s %11s %9s %10s %10s %9s %9s %7s\n", "mode", "seconds", "generated", "re-encoded", "decoded",
              "retrieve s", "encode s", "decode s", "other s", "model%");
  for (const auto& e : j["modes"])
    std::printf("%-8s %9.2f %9lld %11lld %9lld %10.3f %10.2f %9.2f %9.3f %6.1f%%\n",
                e["mode"].get<std::string>().c_str(), e["seconds"].get<double>(), (long long)e["generated"].get<int64_t>(),
                (long long)e["tokens_reencoded"].get<int64_t>(), (long long)e["tokens_decoded"].get<int64_t>(),
                e["retrieve_seconds"].get<double>(), e["reencode_seconds"].get<double>(),
                e["decode_seconds"].get<double>(), e["other_seconds"].get<double>(),
                100.0 * e["model_share"].get<double>());
  if (j.contains("speedup_append_over_prepend"))
    std::printf("speedup append/prepend: %.2fx\n", j["speedup_append_over_prepend"].get<double>());
  const auto& m = j["memory"];
  std::printf("memory: weights %.1f MB + KV cache %.1f MB; peak RSS %.1f MB (%.1f MB before the model) = %.3fx weights + cache\n",
              m["weights_bytes"].get<int64_t>() / 1e6, m["kv_cache_bytes"].get<int64_t>() / 1e6,
              m["peak_rss_bytes"].get<int64_t>() / 1e6, m["process_before_model_bytes"].get<int64_t>() / 1e6,
              m["peak_over_weights_and_cache"].get<double>());
}

void bench_ralm(const BenchRalmArgs& a) {
  if (a.stride < 1 || a.doc < 1 || a.init < 1) throw InvalidArgument("--init, --stride and --doc must be >= 1");
  if (a.to_generate() < 1)
    throw InvalidArgument("--total " + std::to_string(a.total) + " leaves nothing to generate after --init " +
                          std::to_string(a.init) + " and a --doc of " + std::to_string(a.doc));
  const std::vector<ContextMode> modes = parse_context_modes(a.modes);
  const int threads = init_threads(a.threads);
  const int64_t rss_start = bench::rss_bytes();  // the process before the model: code and libraries
  LlamaForCausalLM model = bench::bench_model(a.model, a.config, a.dtype, a.seed, a.capacity(), a.device);
  KVCacheStore cache = model->make_cache(1, a.capacity());
  int64_t weight_bytes = 0;
  for (const auto& p : model->parameters()) weight_bytes += int64_t(p.nbytes());

  std::map<ContextMode, std::vector<RunResult>> runs;
  for (int rep = 0; rep < a.repeats; ++rep) {
    std::vector<ContextMode> order = modes;
    if (rep % 2) std::reverse(order.begin(), order.end());
    for (ContextMode m : order) {
      runs[m].push_back(run_mode(m, *model, cache, a, a.seed + 1 + rep));
      if (!a.json)
        std::fprintf(stderr, "bench ralm: repeat %d/%d %-7s %.2f s\n", rep + 1, a.repeats, context_mode_name(m),
                     runs[m].back().seconds);
    }
  }

  nlohmann::ordered_json j;
  j["bench"] = "ralm";
  j["config"] = a.measured();
  j["parameters"] = model->config().num_parameters();
  j["dtype"] = a.dtype;
  j["device"] = a.device;
  j["init"] = a.init;
  j["total"] = a.total;
  j["stride"] = a.stride;
  j["doc"] = a.doc;
  j["threads"] = threads;
  j["repeats"] = a.repeats;
  for (ContextMode m : modes) j["modes"].push_back(summarize(m, runs[m]));
  const int64_t peak = bench::peak_rss_bytes(), held = weight_bytes + cache.bytes_allocated();
  j["memory"] = {{"weights_bytes", weight_bytes},
                 {"kv_cache_bytes", cache.bytes_allocated()},
                 {"process_before_model_bytes", rss_start},
                 {"peak_rss_bytes", peak},
                 {"peak_over_weights_and_cache", double(peak) / double(held)},
                 {"peak_minus_process_over_weights_and_cache", double(peak - rss_start) / double(held)}};
  if (runs.count(ContextMode::Append) && runs.count(ContextMode::Prepend)) {
    const double append = j["modes"][std::find(modes.begin(), modes.end(), ContextMode::Append) - modes.begin()]["seconds"];
    const double prepend = j["modes"][std::find(modes.begin(), modes.end(), ContextMode::Prepend) - modes.begin()]["seconds"];
    if (append > 0) j["speedup_append_over_prepend"] = prepend / append;
  }
  if (a.json)
    std::printf("%s\n", j.dump().c_str());
  else
    print_table(j, a);
}

}  // namespace

void add_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks on random weights or a --model (the paper's runtime test)");
  bench->require_subcommand(1);
  auto a = std::make_shared<BenchRalmArgs>();
  CLI::App* cmd = bench->add_subcommand("ralm", "append vs prepend: generate from --init to --total - --doc tokens, "
                                                "a random document every --stride tokens");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", a->config, "model config spec: hidden=,layers=,heads=,kv_heads=,ffn=,vocab=[,max_pos=]");
  cmd->add_option("--model,-m", a->model, bench::kModelHelp);
  cmd->add_option("--dtype", a->dtype, "fp32, bf16 or fp16");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--init", a->init, "input tokens at the start")->check(CLI::PositiveNumber);
  cmd->add_option("--total", a->total, "the sequence ends at total - doc tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--stride", a->stride, "tokens between retrievals")->check(CLI::PositiveNumber);
  cmd->add_option("--doc", a->doc, "tokens per document")->check(CLI::PositiveNumber);
  cmd->add_option("--modes", a->modes, "append,prepend (either or both; none also runs)");
  cmd->add_option("--repeats", a->repeats, "runs per mode (medians reported)")->check(CLI::Range(1, 100));
  cmd->add_option("--threads", a->threads, "intra-op threads (default: all cores)");
  cmd->add_option("--seed", a->seed, "weights and token ids");
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a] { bench_ralm(*a); });
  add_bench_model(*bench);
#ifdef FLASHBACK_WITH_RETRIEVAL
  add_bench_retrieve(*bench);
#endif
}

}  // namespace flashback::cli
