// Dense embeddings from the language model itself: final hidden states,
// mean-pooled over the text's tokens, L2-normalised (inner product = cosine).
#include "flashback/retrieval/model_encoder.hpp"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <numeric>

#include "flashback/error.hpp"

namespace flashback {

namespace {
constexpr size_t kBatch = 16;  // texts per forward pass
}

ModelEncoder::ModelEncoder(LlamaForCausalLM model, Tokenizer tokenizer, std::string description, int64_t max_tokens)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      description_(std::move(description)),
      max_tokens_(max_tokens) {
  if (model_.is_empty()) throw InvalidArgument("ModelEncoder: no model");
  if (max_tokens_ < 1) throw InvalidArgument("ModelEncoder: max_tokens must be at least 1");
  const LlamaConfig& c = model_->config();
  if (tokenizer_.vocab_size() == 0 || tokenizer_.vocab_size() > c.vocab_size)
    throw InvalidArgument("ModelEncoder: the tokenizer's vocabulary (" + std::to_string(tokenizer_.vocab_size()) +
                          ") does not fit the model's (" + std::to_string(c.vocab_size) + ")");
  // BOS takes the first position.
  max_tokens_ = std::min<int64_t>(max_tokens_, c.max_position_embeddings - 1);
  if (max_tokens_ < 1) throw InvalidArgument("ModelEncoder: the model has no room for text");
}

int64_t ModelEncoder::dim() const { return model_->config().hidden_size; }

std::vector<float> ModelEncoder::encode(const std::vector<std::string>& texts) {
  c10::InferenceMode guard;
  const int64_t d = dim();
  std::vector<float> out(texts.size() * static_cast<size_t>(d), 0.0f);

  std::vector<std::vector<int32_t>> ids(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    ids[i] = tokenizer_.encode(texts[i]);
    if (static_cast<int64_t>(ids[i].size()) > max_tokens_) ids[i].resize(static_cast<size_t>(max_tokens_));
  }
  // Batches of similar length waste little on padding. Padding goes after
  // the text, and attention is causal, so it never changes the states that
  // are pooled.
  std::vector<size_t> order;
  for (size_t i = 0; i < texts.size(); ++i)
    if (!ids[i].empty()) order.push_back(i);  // an empty text stays a zero vector
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() < ids[b].size(); });

  const int64_t bos = tokenizer_.bos_id() >= 0 ? tokenizer_.bos_id() : 0;
  for (size_t b = 0; b < order.size(); b += kBatch) {
    const size_t e = std::min(order.size(), b + kBatch);
    int64_t len = 0;
    for (size_t r = b; r < e; ++r) len = std::max<int64_t>(len, static_cast<int64_t>(ids[order[r]].size()));
    at::Tensor tokens = at::full({static_cast<int64_t>(e - b), len + 1}, bos, at::kLong);
    auto acc = tokens.accessor<int64_t, 2>();
    for (size_t r = b; r < e; ++r) {
      const auto& v = ids[order[r]];
      for (size_t j = 0; j < v.size(); ++j) acc[static_cast<int64_t>(r - b)][static_cast<int64_t>(j + 1)] = v[j];
    }
    at::Tensor h = model_->hidden_states(tokens.to(model_->device()), {}, nullptr).to(at::kCPU, at::kFloat);
    for (size_t r = b; r < e; ++r) {
      const auto n = static_cast<int64_t>(ids[order[r]].size());
      at::Tensor pooled = h[static_cast<int64_t>(r - b)].narrow(0, 1, n).mean(0);  // skip BOS
      const double norm = pooled.norm().item<double>();
      if (norm > 0) pooled = pooled / norm;
      pooled = pooled.contiguous();
      std::copy_n(pooled.data_ptr<float>(), d, out.begin() + static_cast<std::ptrdiff_t>(order[r] * static_cast<size_t>(d)));
    }
  }
  return out;
}

}  // namespace flashback
