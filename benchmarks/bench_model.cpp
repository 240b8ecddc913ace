// bench_model: prefill and decode throughput of the C++ decoder for a Llama
// config given by flags (random weights), next to this machine's floors:
//   decode floor  = measured memory read bandwidth / bytes read per token
//   prefill floor = measured GEMM throughput / model FLOPs per token
// Example:
//   build/bench_model --config hidden=768,layers=12,heads=12,kv_heads=12,ffn=2048,vocab=32000 \
//                     --dtype fp32 --prefill 512 --context 512 --decode 64 --json
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "flashback/flashback.hpp"

using namespace flashback;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string config = "hidden=768,layers=12,heads=12,kv_heads=12,ffn=2048,vocab=32000,max_pos=4096";
  std::string dtype = "fp32";
  int64_t prefill = 512, context = 512, decode = 64;
  int repeats = 3, threads = 0;
  bool json = false;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "bench_model: %s\nusage: bench_model [--config SPEC] [--dtype fp32|bf16|fp16] [--prefill T] "
               "[--context C] [--decode N] [--repeats R] [--threads N] [--json]\n",
               msg);
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + k).c_str());
      return argv[++i];
    };
    auto num = [&]() -> int64_t {
      std::string v = val();
      char* end = nullptr;
      long long n = std::strtoll(v.c_str(), &end, 10);
      if (!end || *end || n < 0) usage(("bad number for " + k + ": " + v).c_str());
      return n;
    };
    if (k == "--config") a.config = val();
    else if (k == "--dtype") a.dtype = val();
    else if (k == "--prefill") a.prefill = num();
    else if (k == "--context") a.context = num();
    else if (k == "--decode") a.decode = num();
    else if (k == "--repeats") a.repeats = static_cast<int>(std::max<int64_t>(1, num()));
    else if (k == "--threads") a.threads = static_cast<int>(num());
    else if (k == "--json") a.json = true;
    else usage(("unknown flag " + k).c_str());
  }
  return a;
}

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Memory read bandwidth: reduce a buffer far larger than the caches (best of 5).
double read_bandwidth(at::ScalarType dt) {
  at::Tensor buf = at::ones({int64_t(1) << 27}, at::kFloat);  // 512 MiB
  (void)buf.sum().item<float>();
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now();
    (void)buf.sum().item<float>();
    best = std::min(best, seconds(t0));
  }
  (void)dt;
  return double(buf.nbytes()) / best;
}

// GEMM throughput of one [T, C] x [C, F] product (best of 5).
double gemm_flops(int64_t T, int64_t C, int64_t F, at::ScalarType dt) {
  at::Tensor x = at::randn({T, C}).to(dt), w = at::randn({F, C}).to(dt);
  (void)at::linear(x, w);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now();
    (void)at::linear(x, w);
    best = std::min(best, seconds(t0));
  }
  return 2.0 * T * C * F / best;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  try {
    const int threads = init_threads(a.threads);
    LlamaConfig cfg = LlamaConfig::from_spec(a.config);
    const at::ScalarType dt = a.dtype == "bf16" ? at::kBFloat16 : a.dtype == "fp16" ? at::kHalf : at::kFloat;
    if (a.dtype != "fp32" && a.dtype != "bf16" && a.dtype != "fp16") usage("dtype must be fp32, bf16 or fp16");
    if (a.prefill < 1 || a.context < 1 || a.prefill > cfg.max_position_embeddings ||
        a.context + a.decode > cfg.max_position_embeddings)
      usage("prefill/context/decode must fit in max_pos");

    LlamaModel model(cfg, LlamaModelOptions{dt, at::kCPU});
    model->init_random(0);
    c10::InferenceMode guard;
    const int64_t params = cfg.num_parameters();
    const int64_t elem = int64_t(c10::elementSize(dt));
    // Bytes a decode step must read: every weight except the embedding table
    // (one row is gathered), plus the head (tied or not).
    const int64_t embed = cfg.vocab_size * cfg.hidden_size;
    const int64_t read_params = params - (cfg.tie_word_embeddings ? 0 : embed);
    const double weight_bytes = double(read_params) * elem;
    const double kv_bytes = 2.0 * cfg.num_hidden_layers * cfg.kv_dim() * a.context * elem;

    // ---- prefill: T tokens into an empty cache
    KVCacheStore cache = model->make_cache(1, std::max(a.prefill, a.context + a.decode));
    at::Tensor prompt = at::randint(0, cfg.vocab_size, {1, a.prefill}, at::kLong);
    std::vector<double> pre;
    for (int r = 0; r <= a.repeats; ++r) {  // first run warms up
      cache.clear();
      auto t0 = Clock::now();
      at::Tensor h = model->hidden_states(prompt, {}, &cache);
      (void)model->logits(h.select(1, a.prefill - 1)).sum().item<float>();
      if (r > 0) pre.push_back(seconds(t0));
    }
    const double prefill_s = median(pre);

    // ---- decode: N steps after a C-token context
    at::Tensor ctx = at::randint(0, cfg.vocab_size, {1, a.context}, at::kLong);
    std::vector<double> dec;
    for (int r = 0; r <= a.repeats; ++r) {
      cache.clear();
      model->hidden_states(ctx, {}, &cache);
      int64_t tok = 1;
      auto t0 = Clock::now();
      for (int64_t i = 0; i < a.decode; ++i) tok = decode_step(*model, cache, tok).argmax().item<int64_t>();
      if (r > 0) dec.push_back(seconds(t0) / double(a.decode));
    }
    const double decode_s = median(dec);

    // ---- floors
    const double bw = read_bandwidth(dt);
    // The best GEMM rate LibTorch reaches here: the model's own prefill
    // shapes and a large square product.
    const double gemm = std::max({gemm_flops(a.prefill, cfg.hidden_size, cfg.intermediate_size, dt),
                                  gemm_flops(a.prefill, cfg.hidden_size, cfg.vocab_size, dt),
                                  gemm_flops(2048, 2048, 2048, dt)});
    const double matmul_params = double(read_params);
    const double attn_flops = 4.0 * cfg.num_hidden_layers * cfg.q_dim() * double(a.prefill) * a.prefill;
    const double prefill_flops = 2.0 * matmul_params * a.prefill + attn_flops;

    nlohmann::ordered_json j;
    j["config"] = nlohmann::json::parse(cfg.to_json());
    j["dtype"] = a.dtype;
    j["threads"] = threads;
    j["parameters"] = params;
    j["weight_bytes_read_per_token"] = weight_bytes;
    j["prefill"] = {{"tokens", a.prefill},
                    {"seconds", prefill_s},
                    {"tokens_per_s", a.prefill / prefill_s},
                    {"gflops", prefill_flops / prefill_s / 1e9},
                    {"gemm_gflops_measured", gemm / 1e9},
                    {"fraction_of_gemm", prefill_flops / prefill_s / gemm}};
    j["decode"] = {{"context", a.context},
                   {"tokens", a.decode},
                   {"seconds_per_token", decode_s},
                   {"tokens_per_s", 1.0 / decode_s},
                   {"read_bandwidth_gbs_measured", bw / 1e9},
                   {"floor_tokens_per_s_weights", bw / weight_bytes},
                   {"floor_tokens_per_s_weights_kv", bw / (weight_bytes + kv_bytes)},
                   {"fraction_of_floor", (1.0 / decode_s) / (bw / (weight_bytes + kv_bytes))}};
    if (a.json) {
      std::cout << j.dump(2) << "\n";
    } else {
      std::printf("config %s, %s, %d threads, %.1fM parameters\n", a.config.c_str(), a.dtype.c_str(), threads,
                  params / 1e6);
      std::printf("prefill %lld tokens: %.1f tok/s (%.1f GFLOP/s; GEMM here %.1f GFLOP/s -> %.0f%%)\n",
                  (long long)a.prefill, a.prefill / prefill_s, prefill_flops / prefill_s / 1e9, gemm / 1e9,
                  100.0 * prefill_flops / prefill_s / gemm);
      std::printf("decode at %lld context: %.2f tok/s (floor %.2f tok/s from %.1f GB/s read bandwidth -> %.0f%%)\n",
                  (long long)a.context, 1.0 / decode_s, bw / (weight_bytes + kv_bytes), bw / 1e9,
                  100.0 * (1.0 / decode_s) / (bw / (weight_bytes + kv_bytes)));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
