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
//
// --streams 1,2,4,8: N independent streams (each its own input and random
// documents) generate at once through shared forwards (batching.hpp); their
// tokens/s against one stream alone, and every stream's ids against its solo
// run (a mismatch fails the command).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
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
  std::string kv_dtype;  // "": the model's
  std::string device = "cpu";
  std::string modes = "append,prepend";
  std::string warmup = "auto";  // short | full | auto (full off the CPU)
  std::vector<int64_t> streams;  // batched stream counts (--streams); empty: the solo runs only
  int64_t init = 1536, total = 2048, stride = 16, doc = 128;
  int repeats = 1, threads = 0;
  uint64_t seed = 0;
  bool json = false, keep_quantized = false;

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

// The bench's RALM options for `mode`: append with the marks, as FlashBack;
// prepend without, as In-Context RALM.
RalmOptions bench_options(ContextMode mode, const BenchRalmArgs& a) {
  RalmOptions o;
  o.stride = a.stride;
  o.max_length = a.capacity();
  o.doc_tokens = a.doc;  // the room kept below the input (doc_positions before) fits the bench's documents
  o.window_keep = 1.0;
  o.marks = mode == ContextMode::Append;
  o.kv_dtype = a.kv_dtype;
  return o;
}

// Positions the model must hold: the cache's slots, and below the input the
// room a block placed before it keeps (doc_positions before: resolve's offset).
int64_t positions_needed(const BenchRalmArgs& a) {
  int64_t n = 0;
  for (ContextMode m : {ContextMode::Append, ContextMode::Prepend, ContextMode::None}) {
    const ContextOptions c = ContextOptions::resolve(m, bench_options(m, a), a.capacity());
    n = std::max(n, c.position_offset + c.max_length);
  }
  return n;
}

GenerateOptions bench_generation(const BenchRalmArgs& a) {
  GenerateOptions g;
  g.max_new_tokens = a.to_generate();
  g.stop_at_eos = false;
  return g;
}

// Stream i's input and documents: its own seed (stream 0's is the solo run's).
uint64_t stream_seed(uint64_t seed, int64_t i) { return seed + 7919 * static_cast<uint64_t>(i); }

// `n` random ids avoiding the last two of the vocabulary, which play the marks.
std::vector<int64_t> bench_input(int64_t vocab, int64_t n, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  at::Tensor init = at::randint(1, vocab - 2, {n}, gen, at::kLong);  // [n]
  return std::vector<int64_t>(init.data_ptr<int64_t>(), init.data_ptr<int64_t>() + n);
}

// One run of `mode` on the model itself: stream `stream`'s input and documents.
RunResult run_mode(ContextMode mode, LlamaForCausalLMImpl& model, KVCacheStore& cache, const BenchRalmArgs& a,
                   uint64_t seed, int64_t stream = 0) {
  const int64_t V = model.config().vocab_size;
  const uint64_t s = stream_seed(seed, stream);
  auto ctx = make_context(mode, model, cache, MarkingToken(V), bench_options(mode, a));
  RandomDocuments documents(a.doc, 1, V - 2, s);
  RunResult r;
  auto first_token = [&](int64_t) {
    if (!r.rss_after_first_place) r.rss_after_first_place = bench::rss_bytes();
    return true;
  };
  const auto t0 = Clock::now();
  r.generation = generate(*ctx, documents, bench_input(V, a.init, s), bench_generation(a), first_token);
  r.seconds = since(t0);
  r.rss_at_end = bench::rss_bytes();
  return r;
}

// `n` streams of `mode` through shared forwards (batching.hpp), over the
// first n of `caches`: stream i's input and documents as run_mode's.
struct StreamsRun {
  double seconds = 0;
  BatchGeneration batch;
};

StreamsRun run_streams(ContextMode mode, LlamaForCausalLMImpl& model, std::vector<KVCacheStore>& caches, int64_t n,
                       const BenchRalmArgs& a, uint64_t seed) {
  const int64_t V = model.config().vocab_size;
  std::vector<std::unique_ptr<RandomDocuments>> documents;
  std::vector<DocumentSource*> document_ptrs;
  std::vector<std::vector<int64_t>> inputs;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t s = stream_seed(seed, i);
    documents.push_back(std::make_unique<RandomDocuments>(a.doc, 1, V - 2, s));
    document_ptrs.push_back(documents.back().get());
    inputs.push_back(bench_input(V, a.init, s));
  }
  StreamsRun r;
  const auto t0 = Clock::now();
  r.batch = generate_batch(model, mode, MarkingToken(V), bench_options(mode, a), document_ptrs, inputs,
                           bench_generation(a), &caches);
  r.seconds = since(t0);
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
  if (j.contains("streams")) {
    std::printf("%-8s %8s %9s %9s %12s %15s\n", "mode", "streams", "seconds", "tokens/s", "x 1 stream", "ids = solo");
    for (const auto& e : j["streams"])
      std::printf("%-8s %8lld %9.2f %9.2f %11.2fx %15s\n", e["mode"].get<std::string>().c_str(),
                  (long long)e["streams"].get<int64_t>(), e["seconds"].get<double>(), e["tokens_per_second"].get<double>(),
                  e["speedup_over_one_stream"].get<double>(), e["ids_equal_solo"].get<bool>() ? "yes" : "NO");
  }
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
  if (a.warmup != "auto" && a.warmup != "short" && a.warmup != "full")
    throw InvalidArgument("--warmup must be auto, short or full (got '" + a.warmup + "')");
  const int threads = init_threads(a.threads);
  const int64_t rss_start = bench::rss_bytes();  // the process before the model: code and libraries
  LlamaForCausalLM model =
      bench::bench_model(a.model, a.config, a.dtype, a.seed, positions_needed(a), a.device, a.keep_quantized);
  // Every cache as the contexts size it: capacity() slots (bench_options' max_length), in --kv-dtype.
  KVCacheStore cache = make_context_cache(*model, bench_options(ContextMode::Append, a));
  const int64_t weight_bytes = bench::weight_bytes(*model);

  // --streams: stream i of every batched run is checked against its own solo run.
  int64_t max_streams = 1;
  for (int64_t n : a.streams) {
    if (n < 1) throw InvalidArgument("--streams: each count must be >= 1 (got " + std::to_string(n) + ")");
    max_streams = std::max(max_streams, n);
  }
  std::vector<KVCacheStore> stream_caches;
  for (int64_t i = 0; i < (max_streams > 1 ? max_streams : 0); ++i)
    stream_caches.push_back(make_context_cache(*model, bench_options(ContextMode::Append, a)));
  std::map<ContextMode, std::vector<std::vector<int64_t>>> solo_ids;       // [mode][stream]
  std::map<std::pair<ContextMode, int64_t>, std::vector<StreamsRun>> batched;  // [(mode, n)][repeat]
  std::vector<std::string> mismatches;                 // what differed, for the error
  std::set<std::pair<ContextMode, int64_t>> differing;  // (mode, n) with a stream that differed

  // Untimed, each mode once first: the first calls pay for kernel loading and, on a GPU, the context, the
  // BLAS handles and each new kernel shape's first use, which would otherwise be charged to whichever mode
  // runs first. Short: a few strides of input; full: the timed run's size (the default off the CPU).
  const bool full_warmup = a.warmup == "full" || (a.warmup == "auto" && a.device != "cpu");
  BenchRalmArgs warm = a;
  if (!full_warmup) {
    warm.init = std::min<int64_t>(a.init, 2 * a.stride);
    warm.total = warm.init + a.doc + 2 * a.stride;
  }
  for (ContextMode m : modes) (void)run_mode(m, *model, cache, warm, a.seed);

  std::map<ContextMode, std::vector<RunResult>> runs;
  for (int rep = 0; rep < a.repeats; ++rep) {
    std::vector<ContextMode> order = modes;
    if (rep % 2) std::reverse(order.begin(), order.end());
    for (ContextMode m : order) {
      runs[m].push_back(run_mode(m, *model, cache, a, a.seed + 1 + rep));
      if (!a.json)
        std::fprintf(stderr, "bench ralm: repeat %d/%d %-7s %.2f s\n", rep + 1, a.repeats, context_mode_name(m),
                     runs[m].back().seconds);
      if (max_streams == 1) continue;
      // Streams beyond the first, alone (their reference ids): once, in the first repeat's inputs.
      if (rep == 0) {
        solo_ids[m].push_back(runs[m].back().generation.ids);
        for (int64_t i = 1; i < max_streams; ++i) {
          solo_ids[m].push_back(run_mode(m, *model, cache, a, a.seed + 1, i).generation.ids);
          if (!a.json) std::fprintf(stderr, "bench ralm: %-7s stream %lld alone\n", context_mode_name(m), (long long)i);
        }
      }
      for (int64_t n : a.streams) {
        if (n == 1) continue;
        // The first repeat's inputs every time: the ids must be the solo runs' each repeat.
        StreamsRun r = run_streams(m, *model, stream_caches, n, a, a.seed + 1);
        for (int64_t i = 0; i < n; ++i)
          if (r.batch.results[static_cast<size_t>(i)].ids != solo_ids[m][static_cast<size_t>(i)]) {
            mismatches.push_back(std::string(context_mode_name(m)) + " stream " + std::to_string(i) + " of " +
                                 std::to_string(n) + " (repeat " + std::to_string(rep + 1) + ")");
            differing.insert({m, n});
          }
        if (!a.json)
          std::fprintf(stderr, "bench ralm: repeat %d/%d %-7s %lld streams %.2f s\n", rep + 1, a.repeats,
                       context_mode_name(m), (long long)n, r.seconds);
        batched[{m, n}].push_back(std::move(r));
      }
    }
  }

  nlohmann::ordered_json j;
  j["bench"] = "ralm";
  j["config"] = a.measured();
  j["parameters"] = model->config().num_parameters();
  j["dtype"] = a.dtype;
  j["kv_dtype"] = RalmOptions::parse_kv_dtype(a.kv_dtype) ? a.kv_dtype : a.dtype;
  j["device"] = a.device;
  j["init"] = a.init;
  j["total"] = a.total;
  j["stride"] = a.stride;
  j["doc"] = a.doc;
  j["threads"] = threads;
  j["repeats"] = a.repeats;
  j["warmup"] = full_warmup ? "full" : "short";
  for (ContextMode m : modes) j["modes"].push_back(summarize(m, runs[m]));
  // Streams: tokens/s of n streams together against one stream alone (run_mode, the plain loop).
  for (ContextMode m : modes) {
    if (a.streams.empty()) break;
    std::vector<double> solo_seconds;
    for (const auto& r : runs[m]) solo_seconds.push_back(r.seconds);
    const double generated = double(a.to_generate()), solo_rate = generated / median(solo_seconds);
    for (int64_t n : a.streams) {
      nlohmann::ordered_json e;
      e["mode"] = context_mode_name(m);
      e["streams"] = n;
      if (n == 1) {
        e["seconds"] = median(solo_seconds);
        e["seconds_all"] = solo_seconds;
        e["tokens_per_second"] = solo_rate;
        e["speedup_over_one_stream"] = 1.0;
        e["ids_equal_solo"] = true;
      } else {
        std::vector<double> secs;
        for (const auto& r : batched[{m, n}]) secs.push_back(r.seconds);
        const StreamBatcher::Stats& st = batched[{m, n}].front().batch.stats;
        e["seconds"] = median(secs);
        e["seconds_all"] = secs;
        e["tokens_per_second"] = double(n) * generated / median(secs);
        e["speedup_over_one_stream"] = double(n) * generated / median(secs) / solo_rate;
        e["ids_equal_solo"] = differing.count({m, n}) == 0;
        e["forwards"] = st.forwards;
        e["rows_per_forward"] = st.forwards ? double(st.rows) / double(st.forwards) : 0.0;
        e["max_sequences_per_forward"] = st.max_sequences;
      }
      j["streams"].push_back(e);
    }
  }
  int64_t stream_cache_bytes = 0;
  for (const auto& c : stream_caches) stream_cache_bytes += c.bytes_allocated();
  const int64_t peak = bench::peak_rss_bytes(), held = weight_bytes + cache.bytes_allocated() + stream_cache_bytes;
  j["memory"] = {{"weights_bytes", weight_bytes},
                 {"kv_cache_bytes", cache.bytes_allocated() + stream_cache_bytes},
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
  if (!mismatches.empty())
    throw Error("bench ralm --streams: batched ids differ from the solo run for " + mismatches.front() +
                (mismatches.size() > 1 ? " and " + std::to_string(mismatches.size() - 1) + " more" : std::string()));
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
  cmd->add_option("--kv-dtype", a->kv_dtype, ralm_option_help("kv_dtype"));
  cmd->add_flag("--keep-quantized", a->keep_quantized, kKeepQuantizedHelp);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--init", a->init, "input tokens at the start")->check(CLI::PositiveNumber);
  cmd->add_option("--total", a->total, "the sequence ends at total - doc tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--stride", a->stride, "tokens between retrievals")->check(CLI::PositiveNumber);
  cmd->add_option("--doc", a->doc, "tokens per document")->check(CLI::PositiveNumber);
  cmd->add_option("--modes", a->modes, "append,prepend (either or both; none also runs)");
  cmd->add_option("--repeats", a->repeats, "runs per mode (medians reported)")->check(CLI::Range(1, 100));
  cmd->add_option("--warmup", a->warmup,
                  "untimed run of each mode first: short (a few strides), full (the timed size) or auto (full off "
                  "the CPU, where each kernel shape's first use is costly)");
  cmd->add_option("--streams", a->streams,
                  "also run N streams at once through shared forwards, e.g. 1,2,4,8: tokens/s of all N against one "
                  "stream alone; each stream's ids are checked against its solo run")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
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
