// Next-token selection: small functions over one row of logits [V], with an
// explicit generator so a seed reproduces a run.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>
#include <limits>

#include "flashback/error.hpp"

namespace flashback {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: no top-k cut
  double top_p = 1.0;        // 1: no nucleus cut
  uint64_t seed = 0;

  void validate() const {
    if (!(temperature >= 0.0)) throw InvalidArgument("temperature must be >= 0");
    if (top_k < 0) throw InvalidArgument("top-k must be >= 0");
    if (!(top_p > 0.0 && top_p <= 1.0)) throw InvalidArgument("top-p must be in (0, 1]");
  }
};

// Keeps the k largest logits, the rest -> -inf.   logits: [V]
inline at::Tensor keep_top_k(const at::Tensor& logits, int64_t k) {
  if (k <= 0 || k >= logits.size(-1)) return logits;
  at::Tensor kth = std::get<0>(at::topk(logits, k)).select(-1, k - 1);  // []
  return logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
}

// Keeps the smallest set of most likely tokens whose probability mass reaches p.   logits: [V]
inline at::Tensor keep_top_p(const at::Tensor& logits, double p) {
  if (p >= 1.0) return logits;
  auto [sorted, order] = at::sort(logits, -1, /*descending=*/true);  // [V], [V]
  at::Tensor cum = at::softmax(sorted, -1).cumsum(-1);              // [V]
  // A token stays if the mass before it is < p (so the first always stays).
  at::Tensor drop_sorted = (cum - at::softmax(sorted, -1)) >= p;    // [V]
  at::Tensor drop = at::zeros_like(drop_sorted).scatter(-1, order, drop_sorted);
  return logits.masked_fill(drop, -std::numeric_limits<float>::infinity());
}

class Sampler {
 public:
  explicit Sampler(SamplingOptions options = {})
      : options_(options), gen_(at::make_generator<at::CPUGeneratorImpl>(options.seed)) {
    options_.validate();
  }

  // logits: [V] (any float dtype, any device) -> the chosen id.
  int64_t operator()(const at::Tensor& logits) {
    at::Tensor l = logits.to(at::kFloat).to(at::kCPU);
    if (options_.temperature <= 0.0) return l.argmax().item<int64_t>();
    l = keep_top_p(keep_top_k(l / options_.temperature, options_.top_k), options_.top_p);
    at::Tensor probs = at::softmax(l, -1);  // [V]
    return at::multinomial(probs, 1, /*replacement=*/false, gen_).item<int64_t>();
  }

  const SamplingOptions& options() const { return options_; }

 private:
  SamplingOptions options_;
  at::Generator gen_;
};

}  // namespace flashback
