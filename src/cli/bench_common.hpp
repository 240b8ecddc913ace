// Small helpers shared by the bench subcommands: timing, medians, memory,
// the random model they measure.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "flashback/checkpoint.hpp"
#include "flashback/dtype.hpp"
#include "flashback/llama.hpp"

namespace flashback::cli::bench {

using Clock = std::chrono::steady_clock;

inline double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Resident set size now, from /proc/self/statm (0 where unavailable).
inline int64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t pages_total = 0, pages_resident = 0;
  if (!(f >> pages_total >> pages_resident)) return 0;
  return pages_resident * int64_t(::sysconf(_SC_PAGESIZE));
}

// The process's peak resident set size so far.
inline int64_t peak_rss_bytes() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// The model the benchmarks measure by default: a 134M Llama (GPT-2 small's
// shape with Llama-2's vocabulary), the scale of the paper's speed test.
inline constexpr const char* kDefaultConfig = "hidden=768,layers=12,heads=12,kv_heads=12,ffn=2048,vocab=32000";
inline constexpr const char* kModelHelp =
    "a checkpoint (HF directory, llama2.c .bin, .gguf) to measure instead of random weights of --config";

// A model of the config spec (config.hpp's from_spec) with random weights
// (HF's init), in eval mode, able to hold at least `positions` positions.
inline LlamaForCausalLM random_model(const std::string& spec, const std::string& dtype, uint64_t seed,
                                     int64_t positions, const std::string& device = "cpu") {
  LlamaConfig config = LlamaConfig::from_spec(spec);
  config.max_position_embeddings = std::max(config.max_position_embeddings, positions);
  config.validate("--config");
  LlamaForCausalLMOptions mo;
  mo.dtype = parse_dtype(dtype).value_or(at::kFloat);
  mo.device = parse_device(device);  // made and drawn there: no host copy of a 7B model
  LlamaForCausalLM model(config, mo);
  model->init_random(seed);
  model->eval();
  return model;
}

// Bytes the model's weights take: every parameter, plus the blocks of
// projections kept quantized.
inline int64_t weight_bytes(LlamaForCausalLMImpl& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += int64_t(p.nbytes());
  for (const auto& mod : m.modules(/*include_self=*/false))
    if (auto l = std::dynamic_pointer_cast<LinearImpl>(mod); l && l->quantized) n += int64_t(l->quantized->data.nbytes());
  if (const auto& h = m.model->embed_tokens->head_quantized) n += int64_t(h->data.nbytes());
  return n;
}

// What a benchmark measures: the checkpoint at `model_path` when given (its weights in `dtype`: the same
// file llama.cpp runs, for a side-by-side run), else random weights of `spec`.
inline LlamaForCausalLM bench_model(const std::string& model_path, const std::string& spec, const std::string& dtype,
                                    uint64_t seed, int64_t positions, const std::string& device = "cpu",
                                    bool keep_quantized = false) {
  if (model_path.empty()) {
    if (keep_quantized) throw InvalidArgument("--keep-quantized needs a quantized GGUF --model");
    return random_model(spec, dtype, seed, positions, device);
  }
  LoadOptions o;
  o.dtype = parse_dtype(dtype);
  o.device = parse_device(device);
  o.keep_quantized = keep_quantized;
  LlamaForCausalLM model = load_model(model_path, o);
  if (model->config().max_position_embeddings < positions)
    throw InvalidArgument(model_path + ": the model holds " + std::to_string(model->config().max_position_embeddings) +
                          " positions; this benchmark needs " + std::to_string(positions));
  model->eval();
  return model;
}

}  // namespace flashback::cli::bench
