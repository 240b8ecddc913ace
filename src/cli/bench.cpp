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
// Per mode: seconds, tokens generated / re-encoded / decoded, and the time
// split (retrieve = making the random document, re-encode, decode, other =
// sampling, cache surgery and bookkeeping). Modes alternate within each
// repeat; medians over repeats; the speedup is median(prepend)/median(append).
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench_common.hpp"
#include "bench_subcommands.hpp"
#include "commands.hpp"
#include "flashback/dtype.hpp"
#include "flashback/flashback.hpp"

namespace flashback::cli {

namespace {

using bench::Clock;
using bench::median;
using bench::since;

struct BenchRalmArgs {
  std::string config = "hidden=768,layers=12,heads=12,kv_heads=12,ffn=2048,vocab=32000";
  std::string dtype = "fp32";
  std::string modes = "append,prepend";
  int64_t init = 1536, total = 2048, stride = 16, doc = 128;
  int repeats = 1, threads = 0;
  uint64_t seed = 0;
  bool json = false;
};

struct RunResult {
  double seconds = 0, retrieve = 0, reencode = 0, decode = 0;
  int64_t generated = 0, reencoded = 0, decoded = 0, retrievals = 0, first_place = 0;
  int64_t rss_after_first_place = 0, rss_at_end = 0;  // bytes
};

// Random ids in [0, V - 2): never a mark.
std::vector<int64_t> random_ids(int64_t n, int64_t vocab, at::Generator& gen) {
  at::Tensor t = at::randint(1, vocab - 2, {n}, gen, at::kLong);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

template <class Context>
RunResult run_mode(Context& ctx, const BenchRalmArgs& a, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  c10::InferenceMode guard;
  RunResult r;
  const int64_t to_generate = a.total - a.doc - a.init;
  const auto t0 = Clock::now();
  ctx.reset(random_ids(a.init, vocab, gen));
  at::Tensor logits;
  for (int64_t i = 0; i < to_generate; ++i) {
    if (i % a.stride == 0) {
      const auto tr = Clock::now();
      std::vector<std::vector<int64_t>> docs = {random_ids(a.doc, vocab, gen)};
      r.retrieve += since(tr);
      logits = ctx.place(docs);
      if (i == 0) r.rss_after_first_place = bench::rss_bytes();
    }
    const int64_t next = ctx.marks().strip(logits).argmax().template item<int64_t>();
    ++r.generated;
    if (i + 1 == to_generate) break;
    logits = ctx.append({next}).select(0, 0);
  }
  r.seconds = since(t0);
  r.rss_at_end = bench::rss_bytes();
  const ContextStats& s = ctx.stats();
  r.reencode = s.reencode_seconds;
  r.decode = s.decode_seconds;
  r.reencoded = s.tokens_reencoded;
  r.decoded = s.tokens_decoded;
  r.retrievals = s.retrievals;
  r.first_place = s.reencoded_per_place.empty() ? 0 : s.reencoded_per_place.front();
  return r;
}

void bench_ralm(const BenchRalmArgs& a) {
  if (a.stride < 1 || a.doc < 1 || a.init < 1) throw InvalidArgument("--init, --stride and --doc must be >= 1");
  if (a.total - a.doc - a.init < 1)
    throw InvalidArgument("--total " + std::to_string(a.total) + " leaves nothing to generate after --init " +
                          std::to_string(a.init) + " and a --doc of " + std::to_string(a.doc));
  std::vector<std::string> modes;
  {
    std::stringstream ss(a.modes);
    std::string m;
    while (std::getline(ss, m, ',')) {
      if (m != "append" && m != "prepend") throw InvalidArgument("--modes takes append and/or prepend, not '" + m + "'");
      modes.push_back(m);
    }
  }
  if (modes.empty()) throw InvalidArgument("--modes is empty");
  const int threads = init_threads(a.threads);
  const int64_t rss_start = bench::rss_bytes();  // the process before the model: code and libraries

  LlamaConfig config = LlamaConfig::from_spec(a.config);
  // The layout holds at most total + 2 (marks) positions; the window never slides.
  const int64_t capacity = a.total + 2 + a.stride;
  config.max_position_embeddings = std::max(config.max_position_embeddings, capacity);
  config.validate("--config");
  LlamaForCausalLMOptions mo;
  mo.dtype = parse_dtype(a.dtype).value_or(at::kFloat);
  LlamaForCausalLM model(config, mo);
  model->init_random(a.seed);
  model->eval();
  const int64_t V = config.vocab_size;
  KVCacheStore cache = model->make_cache(1, capacity);
  const MarkingToken marks(V);  // the last two ids play the marks
  int64_t weight_bytes = 0;
  for (const auto& p : model->parameters()) weight_bytes += int64_t(p.nbytes());

  std::map<std::string, std::vector<RunResult>> runs;
  for (int rep = 0; rep < a.repeats; ++rep) {
    std::vector<std::string> order = modes;
    if (rep % 2) std::reverse(order.begin(), order.end());
    for (const auto& m : order) {
      ContextOptions co;
      co.max_length = capacity;
      co.reserve = a.stride;
      co.window_keep = 1.0;
      RunResult r;
      if (m == "append") {
        co.marks = true;  // FlashBack
        AppendingContext<LlamaForCausalLMImpl> ctx(*model, cache, marks, co);
        r = run_mode(ctx, a, V, a.seed + 1 + rep);
      } else {
        co.marks = false;  // In-Context RALM
        PrependingContext<LlamaForCausalLMImpl> ctx(*model, cache, marks, co);
        r = run_mode(ctx, a, V, a.seed + 1 + rep);
      }
      if (!a.json)
        std::fprintf(stderr, "bench ralm: repeat %d/%d %-7s %.2f s\n", rep + 1, a.repeats, m.c_str(), r.seconds);
      runs[m].push_back(r);
    }
  }

  nlohmann::ordered_json j;
  j["bench"] = "ralm";
  j["config"] = a.config;
  j["parameters"] = config.num_parameters();
  j["dtype"] = a.dtype;
  j["init"] = a.init;
  j["total"] = a.total;
  j["stride"] = a.stride;
  j["doc"] = a.doc;
  j["threads"] = threads;
  j["repeats"] = a.repeats;
  std::map<std::string, double> med;
  for (const auto& m : modes) {
    const auto& rs = runs[m];
    auto pick = [&](auto f) {
      std::vector<double> v;
      for (const auto& r : rs) v.push_back(f(r));
      return median(v);
    };
    const double secs = pick([](const RunResult& r) { return r.seconds; });
    const double retrieve = pick([](const RunResult& r) { return r.retrieve; });
    const double reencode = pick([](const RunResult& r) { return r.reencode; });
    const double decode = pick([](const RunResult& r) { return r.decode; });
    const double other = pick([](const RunResult& r) { return r.seconds - r.retrieve - r.reencode - r.decode; });
    med[m] = secs;
    nlohmann::ordered_json e;
    e["mode"] = m;
    e["seconds"] = secs;
    e["seconds_all"] = [&] {
      std::vector<double> v;
      for (const auto& r : rs) v.push_back(r.seconds);
      return v;
    }();
    e["generated"] = rs.front().generated;
    e["retrievals"] = rs.front().retrievals;
    e["tokens_reencoded"] = rs.front().reencoded;
    e["first_place_tokens"] = rs.front().first_place;
    e["tokens_decoded"] = rs.front().decoded;
    e["retrieve_seconds"] = retrieve;
    e["reencode_seconds"] = reencode;
    e["decode_seconds"] = decode;
    e["other_seconds"] = other;
    // Per run, then the median (the split columns are medians taken one by
    // one, so their sum need not equal the median of the totals).
    e["model_share"] = pick([](const RunResult& r) { return r.seconds > 0 ? (r.reencode + r.decode) / r.seconds : 0.0; });
    // Growth of the resident set from the first retrieval to the end of
    // generation (largest over repeats): the cache is preallocated, so
    // nothing should grow with the tokens.
    int64_t growth = 0;
    for (const auto& r : rs) growth = std::max(growth, r.rss_at_end - r.rss_after_first_place);
    e["rss_growth_during_generation_bytes"] = growth;
    j["modes"].push_back(e);
  }
  const int64_t peak = bench::peak_rss_bytes();
  j["memory"] = {{"weights_bytes", weight_bytes},
                 {"kv_cache_bytes", cache.bytes_allocated()},
                 {"process_before_model_bytes", rss_start},
                 {"peak_rss_bytes", peak},
                 {"peak_over_weights_and_cache", double(peak) / double(weight_bytes + cache.bytes_allocated())},
                 {"peak_minus_process_over_weights_and_cache",
                  double(peak - rss_start) / double(weight_bytes + cache.bytes_allocated())}};
  if (med.count("append") && med.count("prepend") && med["append"] > 0)
    j["speedup_append_over_prepend"] = med["prepend"] / med["append"];

  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("bench ralm  %s  %s, %lld params, init %lld, total %lld, stride %lld, doc %lld, %d threads, %d repeat(s)\n",
              a.config.c_str(), a.dtype.c_str(), (long long)config.num_parameters(), (long long)a.init,
              (long long)a.total, (long long)a.stride, (long long)a.doc, threads, a.repeats);
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
  std::printf("memory: weights %.1f MB + KV cache %.1f MB; peak RSS %.1f MB (%.1f MB before the model) = %.3fx weights + cache\n",
              weight_bytes / 1e6, cache.bytes_allocated() / 1e6, peak / 1e6, rss_start / 1e6,
              j["memory"]["peak_over_weights_and_cache"].get<double>());
}

}  // namespace

void add_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks on random weights (the paper's runtime test)");
  bench->require_subcommand(1);
  auto a = std::make_shared<BenchRalmArgs>();
  CLI::App* cmd = bench->add_subcommand("ralm", "append vs prepend: generate from --init to --total - --doc tokens, "
                                                "a random document every --stride tokens");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", a->config, "model config spec: hidden=,layers=,heads=,kv_heads=,ffn=,vocab=[,max_pos=]");
  cmd->add_option("--dtype", a->dtype, "fp32, bf16 or fp16");
  cmd->add_option("--init", a->init, "input tokens at the start")->check(CLI::PositiveNumber);
  cmd->add_option("--total", a->total, "the sequence ends at total - doc tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--stride", a->stride, "tokens between retrievals")->check(CLI::PositiveNumber);
  cmd->add_option("--doc", a->doc, "tokens per document")->check(CLI::PositiveNumber);
  cmd->add_option("--modes", a->modes, "append,prepend (either or both)");
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
