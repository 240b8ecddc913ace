// flashback bench prefill | decode: the decoder's throughput for a config
// (random weights) next to this machine's limits, measured in the same run:
//
//   decode   tokens/s after a --context-token prefix, against the floor
//            read bandwidth / bytes one step must read (every weight but the
//            embedding table, plus the KV cache at that context); the
//            bandwidth is the best of 3 reductions over 512 MiB right after
//            each timed repeat, and the share is the median of the pairs.
//   prefill  tokens/s of one --tokens-token forward into an empty cache (the
//            head on the last row only, as the contexts do), as GFLOP/s of
//            useful work (2 x matmul parameters per token + causal
//            attention), against the best fp32 GEMM rate LibTorch reaches
//            here (the model's own shapes and a 2048^3 product) and the
//            CPU's FMA peak (kernels::fma_peak_flops), measured right after
//            each timed repeat; the shares are the medians of the pairs.
//
// --baseline also times LibTorch's own ops (hand-written kernels off) in
// the same run.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "bench_common.hpp"
#include "bench_subcommands.hpp"
#include "commands.hpp"
#include "flashback/dtype.hpp"
#include "flashback/flashback.hpp"
#include "flashback/kernels.hpp"

namespace flashback::cli {

namespace {
using bench::Clock;
using bench::median;
using bench::since;

struct BenchModelArgs {
  std::string config = bench::kDefaultConfig;
  std::string model;  // a checkpoint instead of random weights of `config`
  std::string dtype = "fp32";
  std::string kv_dtype;  // "": the model's
  std::string device = "cpu";
  int64_t tokens = 0;  // prefill length / decode steps (defaults per command)
  int64_t context = 512;
  int repeats = 3, threads = 0;
  uint64_t seed = 0;
  bool baseline = false, json = false, keep_quantized = false;

  const std::string& measured() const { return model.empty() ? config : model; }
};

// Memory read bandwidth in bytes/s: the best of `reps` sums over a 512 MiB
// buffer.
double read_bandwidth(const at::Tensor& buf, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    (void)buf.sum().item<float>();
    best = std::min(best, since(t0));
  }
  return double(buf.nbytes()) / best;
}

// FLOP/s of one [T, C] x [C, F] product (best of 5).
double gemm_flops(int64_t T, int64_t C, int64_t F, at::ScalarType dt) {
  at::Tensor x = at::randn({T, C}).to(dt), w = at::randn({F, C}).to(dt);
  (void)at::linear(x, w);
  const int reps = dt == at::kFloat ? 5 : 1;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    (void)at::linear(x, w);
    best = std::min(best, since(t0));
  }
  return 2.0 * T * C * F / best;
}

struct Setup {
  LlamaConfig config;
  at::ScalarType dtype;
  std::optional<at::ScalarType> kv_dtype;
  int threads;
  std::unique_ptr<LlamaForCausalLM> model;
};

Setup setup(const BenchModelArgs& a, int64_t positions) {
  Setup s;
  s.kv_dtype = RalmOptions::parse_kv_dtype(a.kv_dtype);
  s.threads = init_threads(a.threads);
  s.model = std::make_unique<LlamaForCausalLM>(
      bench::bench_model(a.model, a.config, a.dtype, a.seed, positions, a.device, a.keep_quantized));
  s.config = (*s.model)->config();
  s.dtype = (*s.model)->dtype();
  return s;
}

// Parameters read by every token's matmuls (all but the embedding table; a
// tied head reads the table once, as the head).
int64_t matmul_params(const LlamaConfig& c) {
  const int64_t embed = c.vocab_size * c.hidden_size;
  return c.num_parameters() - (c.tie_word_embeddings ? 0 : embed);
}

nlohmann::ordered_json header(const BenchModelArgs& a, const Setup& s) {
  nlohmann::ordered_json j;
  j["config"] = a.measured();
  j["parameters"] = s.config.num_parameters();
  j["dtype"] = a.dtype;
  j["kv_dtype"] = s.kv_dtype ? a.kv_dtype : a.dtype;
  j["device"] = a.device;
  j["threads"] = s.threads;
  j["repeats"] = a.repeats;
  j["kernels"] = kernels::cpu_has_avx2_fma();  // the timed runs use Kernels::Auto: do the AVX2 kernels run
  return j;
}

// ---------------------------------------------------------------- prefill
// Prefill timing, each repeat paired with the GEMM rates measured right
// after it (the VM's speed drifts; see time_decode).
struct PrefillTiming {
  std::vector<double> seconds, gemm_shapes, gemm_peak, fma_peak;  // FLOP/s
};

PrefillTiming time_prefill(LlamaForCausalLMImpl& m, KVCacheStore& cache, const at::Tensor& prompt, int repeats,
                           bool with_gemm) {
  const LlamaConfig& c = m.config();
  const int64_t T = prompt.size(1);
  PrefillTiming t;
  for (int r = 0; r <= repeats; ++r) {  // the first run warms up
    {
      c10::InferenceMode guard;
      cache.clear();
      const auto t0 = Clock::now();
      at::Tensor h = m.hidden_states(prompt, {}, &cache);                        // [1, T, C]
      (void)m.logits(h.select(1, T - 1)).argmax().item<int64_t>();              // [V]
      if (r == 0) continue;
      t.seconds.push_back(since(t0));
    }
    if (!with_gemm) continue;
    const double shapes = std::max({gemm_flops(T, c.hidden_size, c.intermediate_size, at::kFloat),
                                    gemm_flops(T, c.intermediate_size, c.hidden_size, at::kFloat),
                                    gemm_flops(T, c.hidden_size, c.q_dim(), at::kFloat)});
    t.gemm_shapes.push_back(shapes);
    t.gemm_peak.push_back(std::max(shapes, gemm_flops(2048, 2048, 2048, at::kFloat)));
    t.fma_peak.push_back(kernels::fma_peak_flops());
  }
  return t;
}

void bench_prefill(BenchModelArgs a) {
  if (a.tokens == 0) a.tokens = 512;
  Setup s = setup(a, a.tokens);
  LlamaForCausalLMImpl& m = **s.model;
  const LlamaConfig& c = s.config;
  KVCacheStore cache = m.make_cache(1, a.tokens, s.kv_dtype);
  at::Tensor prompt = at::randint(0, c.vocab_size, {1, a.tokens}, at::kLong);  // [1, T]
  const PrefillTiming pt = time_prefill(m, cache, prompt, a.repeats, /*with_gemm=*/true);
  const double secs = median(pt.seconds);
  double base_secs = 0;
  if (a.baseline) {
    m.set_kernels(Kernels::LibTorch);
    base_secs = median(time_prefill(m, cache, prompt, a.repeats, false).seconds);
    m.set_kernels(Kernels::Auto);
  }
  // Useful work: every matmul weight once per token, the head once (last
  // row), causal attention (QK^T and PV over j <= i).
  const double T = double(a.tokens);
  const double head = double(c.vocab_size) * c.hidden_size;
  const double flops = 2.0 * (double(matmul_params(c)) - head) * T + 2.0 * head +
                       2.0 * c.num_hidden_layers * double(c.q_dim()) * T * (T + 1);
  // Per repeat: the model's rate over the GEMM rates measured right after it.
  auto shares = [&](const std::vector<double>& gemm) {
    std::vector<double> v;
    for (size_t i = 0; i < gemm.size(); ++i) v.push_back(flops / pt.seconds[i] / gemm[i]);
    return v;
  };
  nlohmann::ordered_json j = header(a, s);
  j["bench"] = "prefill";
  j["tokens"] = a.tokens;
  j["seconds"] = secs;
  j["seconds_all"] = pt.seconds;
  j["tokens_per_s"] = T / secs;
  j["gflops"] = flops / secs / 1e9;
  j["gemm_gflops_fp32"] = median(pt.gemm_peak) / 1e9;
  j["fraction_of_gemm"] = median(shares(pt.gemm_peak));
  j["fraction_of_gemm_all"] = shares(pt.gemm_peak);
  j["gemm_gflops_fp32_model_shapes"] = median(pt.gemm_shapes) / 1e9;  // the model's own products, weights in cache
  j["fraction_of_gemm_model_shapes"] = median(shares(pt.gemm_shapes));
  const double fma = median(pt.fma_peak);  // 0 without AVX2 + FMA
  if (fma > 0) {
    std::vector<double> gemm_of_fma;
    for (size_t i = 0; i < pt.fma_peak.size(); ++i) gemm_of_fma.push_back(pt.gemm_peak[i] / pt.fma_peak[i]);
    j["fma_peak_gflops_fp32"] = fma / 1e9;
    j["fraction_of_fma_peak"] = median(shares(pt.fma_peak));
    j["gemm_fraction_of_fma_peak"] = median(gemm_of_fma);
  }
  if (s.dtype != at::kFloat) {
    // LibTorch's own GEMM in this dtype, for reference (the model runs its
    // bf16 prefill matmuls as fp32 GEMMs on CPU).
    const double g = gemm_flops(std::min<int64_t>(a.tokens, 256), c.hidden_size, c.intermediate_size, s.dtype);
    j["gemm_gflops_libtorch_dtype"] = g / 1e9;
  }
  if (a.baseline) {
    j["libtorch_only"] = {{"seconds", base_secs}, {"tokens_per_s", T / base_secs}, {"gflops", flops / base_secs / 1e9}};
    j["speedup_over_libtorch"] = base_secs / secs;
  }
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("bench prefill  %s  %s, %lld params, %d threads\n", a.measured().c_str(), a.dtype.c_str(),
              (long long)c.num_parameters(), s.threads);
  std::printf("prefill %lld tokens: %.3f s, %.1f tok/s, %.1f GFLOP/s = %.0f%% of LibTorch's best fp32 GEMM here (%.1f GFLOP/s)\n",
              (long long)a.tokens, secs, T / secs, flops / secs / 1e9, 100 * j["fraction_of_gemm"].get<double>(),
              j["gemm_gflops_fp32"].get<double>());
  if (fma > 0)
    std::printf("this CPU's fp32 FMA peak on %d threads: %.1f GFLOP/s; the prefill runs at %.0f%% of it, LibTorch's best GEMM at %.0f%%\n",
                s.threads, fma / 1e9, 100 * j["fraction_of_fma_peak"].get<double>(),
                100 * j["gemm_fraction_of_fma_peak"].get<double>());
  if (a.baseline)
    std::printf("LibTorch ops only: %.3f s (%.2fx)\n", base_secs, base_secs / secs);
}

// ---------------------------------------------------------------- decode
// Decode timing, each repeat paired with a bandwidth measurement right after
// it: this VM's bandwidth drifts by +-20% from minute to minute, so a floor
// measured at another moment would mostly measure the drift.
struct DecodeTiming {
  std::vector<double> step_seconds, bandwidth;
};

DecodeTiming time_decode(LlamaForCausalLMImpl& m, KVCacheStore& cache, const at::Tensor& ctx, int64_t steps, int repeats,
                         const at::Tensor& bw_buffer) {
  c10::InferenceMode guard;
  DecodeTiming t;
  for (int r = 0; r <= repeats; ++r) {  // the first run warms up
    cache.clear();
    m.hidden_states(ctx, {}, &cache);
    int64_t tok = 1;
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < steps; ++i) tok = decode_step(m, cache, tok).argmax().item<int64_t>();
    const double step = since(t0) / double(steps);
    if (r == 0) continue;
    t.step_seconds.push_back(step);
    t.bandwidth.push_back(read_bandwidth(bw_buffer, 3));
  }
  return t;
}

void bench_decode(BenchModelArgs a) {
  if (a.tokens == 0) a.tokens = 32;
  Setup s = setup(a, a.context + a.tokens);
  LlamaForCausalLMImpl& m = **s.model;
  const LlamaConfig& c = s.config;
  KVCacheStore cache = m.make_cache(1, a.context + a.tokens, s.kv_dtype);
  at::Tensor ctx = at::randint(0, c.vocab_size, {1, a.context}, at::kLong);  // [1, context]
  const double elem = double(c10::elementSize(cache.dtype()));
  // Every weight but the embedding table (a tied head reads it once, as the head, unless the head has
  // blocks of its own: keep_quantized).
  const bool table_is_head = c.tie_word_embeddings && !m.model->embed_tokens->head_quantized;
  const double embed_bytes = table_is_head ? 0.0 : double(m.model->embed_tokens->weight.nbytes());
  const double weight_bytes = double(bench::weight_bytes(m)) - embed_bytes;
  // The KV cache read by the middle step of the run.
  const double kv_bytes = 2.0 * c.num_hidden_layers * c.kv_dim() * (a.context + a.tokens / 2.0) * elem;
  const double bytes = weight_bytes + kv_bytes;
  // On the model's device: a GPU's floor is its own memory's bandwidth (2 GiB there, far past its L2).
  const bool host = m.device().is_cpu();
  at::Tensor bw_buffer = at::ones({int64_t(1) << (host ? 27 : 29)}, at::TensorOptions().device(m.device()));  // fp32: 512 MiB | 2 GiB
  (void)bw_buffer.sum().item<float>();
  // Per repeat: tokens/s over the floor measured right after it; medians.
  auto shares = [&](const DecodeTiming& t) {
    std::vector<double> v;
    for (size_t i = 0; i < t.step_seconds.size(); ++i) v.push_back((1.0 / t.step_seconds[i]) / (t.bandwidth[i] / bytes));
    return v;
  };
  const DecodeTiming fast = time_decode(m, cache, ctx, a.tokens, a.repeats, bw_buffer);
  const double step = median(fast.step_seconds);
  const double bw = median(fast.bandwidth);
  const double floor = bw / bytes;
  DecodeTiming slow;
  double base_step = 0;
  if (a.baseline) {
    m.set_kernels(Kernels::LibTorch);
    slow = time_decode(m, cache, ctx, a.tokens, a.repeats, bw_buffer);
    m.set_kernels(Kernels::Auto);
    base_step = median(slow.step_seconds);
  }
  nlohmann::ordered_json j = header(a, s);
  j["bench"] = "decode";
  j["context"] = a.context;
  j["tokens"] = a.tokens;
  j["seconds_per_token"] = step;
  j["tokens_per_s"] = 1.0 / step;
  j["bytes_read_per_token"] = weight_bytes + kv_bytes;
  j["read_bandwidth_gbs"] = bw / 1e9;
  j["read_bandwidth_bytes_per_s_all"] = fast.bandwidth;
  j["floor_tokens_per_s"] = floor;
  j["fraction_of_floor"] = median(shares(fast));
  j["fraction_of_floor_all"] = shares(fast);
  j["effective_gbs"] = (weight_bytes + kv_bytes) / step / 1e9;
  if (a.baseline) {
    j["libtorch_only"] = {{"seconds_per_token", base_step},
                          {"tokens_per_s", 1.0 / base_step},
                          {"fraction_of_floor", median(shares(slow))}};
    j["speedup_over_libtorch"] = base_step / step;
  }
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("bench decode  %s  %s, %lld params, %d threads\n", a.measured().c_str(), a.dtype.c_str(),
              (long long)c.num_parameters(), s.threads);
  std::printf("decode at context %lld: %.2f tok/s; floor %.2f tok/s (%.1f MB per token at %.1f GB/s) -> %.0f%%\n",
              (long long)a.context, 1.0 / step, floor, bytes / 1e6, bw / 1e9, 100 * j["fraction_of_floor"].get<double>());
  if (a.baseline)
    std::printf("LibTorch ops only: %.2f tok/s (%.0f%% of the floor); the kernels are %.2fx faster\n", 1.0 / base_step,
                100 * j["libtorch_only"]["fraction_of_floor"].get<double>(), base_step / step);
}

void add_common(CLI::App* cmd, const std::shared_ptr<BenchModelArgs>& a) {
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", a->config, "model config spec: hidden=,layers=,heads=,kv_heads=,ffn=,vocab=[,max_pos=]");
  cmd->add_option("--model,-m", a->model, bench::kModelHelp);
  cmd->add_option("--dtype", a->dtype, "fp32, bf16 or fp16");
  cmd->add_option("--kv-dtype", a->kv_dtype, ralm_option_help("kv_dtype"));
  cmd->add_flag("--keep-quantized", a->keep_quantized, kKeepQuantizedHelp);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--repeats", a->repeats, "timed runs after a warm-up (median reported)")->check(CLI::Range(1, 100));
  cmd->add_option("--threads", a->threads, "intra-op threads (default: all cores)");
  cmd->add_option("--seed", a->seed, "weights and token ids");
  cmd->add_flag("--baseline", a->baseline, "also time LibTorch's own ops (hand-written kernels off)");
  cmd->add_flag("--json", a->json, "print JSON");
}
}  // namespace

void add_bench_model(CLI::App& bench) {
  auto p = std::make_shared<BenchModelArgs>();
  CLI::App* pre = bench.add_subcommand("prefill", "tokens/s of one prefill, against the GEMM rate LibTorch reaches here");
  add_common(pre, p);
  pre->add_option("--tokens", p->tokens, "prompt length (default 512)")->check(CLI::PositiveNumber);
  pre->callback([p] { bench_prefill(*p); });

  auto d = std::make_shared<BenchModelArgs>();
  CLI::App* dec = bench.add_subcommand("decode", "tokens/s of decode steps, against the memory-bandwidth floor");
  add_common(dec, d);
  dec->add_option("--context", d->context, "tokens in the cache before decoding")->check(CLI::PositiveNumber);
  dec->add_option("--tokens", d->tokens, "decode steps per run (default 32)")->check(CLI::PositiveNumber);
  dec->callback([d] { bench_decode(*d); });
}

}  // namespace flashback::cli
