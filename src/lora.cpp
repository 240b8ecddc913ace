// LoRA on one projection and trainable token rows (lora.hpp).
#include "flashback/lora.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "flashback/error.hpp"

namespace flashback {

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

void LoraConfig::validate(const std::string& where) const {
  if (r <= 0) throw InvalidArgument(where + ": LoRA rank r must be positive, got " + std::to_string(r));
  if (!(alpha > 0)) throw InvalidArgument(where + ": lora_alpha must be positive");
  if (!(dropout >= 0 && dropout < 1)) throw InvalidArgument(where + ": lora_dropout must be in [0, 1)");
  if (target_modules.empty()) throw InvalidArgument(where + ": target_modules is empty");
  for (const auto& t : target_modules) {
    const auto& ok = lora_target_names();
    if (std::find(ok.begin(), ok.end(), t) == ok.end())
      throw InvalidArgument(where + ": unknown LoRA target module '" + t +
                            "' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)");
  }
  std::vector<int64_t> idx = trainable_token_indices;
  std::sort(idx.begin(), idx.end());
  if (std::adjacent_find(idx.begin(), idx.end()) != idx.end())
    throw InvalidArgument(where + ": trainable_token_indices has duplicates");
}

// ---------------------------------------------------------------- LoRA
LoraAdapter::LoraAdapter(LinearImpl& base, int64_t r, double alpha, double dropout)
    : r(r), alpha(alpha), scaling(alpha / double(r)), dropout(dropout), base_(&base) {
  auto opts = base.weight.options();
  lora_A = base.register_module("lora_A", Linear(base.in_features, r, opts));   // weight [r, in]
  lora_B = base.register_module("lora_B", Linear(r, base.out_features, opts));  // weight [out, r]
  lora_A->train(base.is_training());
  lora_B->train(base.is_training());
  reset_parameters();
}

void LoraAdapter::reset_parameters() {
  at::NoGradGuard no_grad;
  // kaiming_uniform_(a = sqrt(5)) as nn.Linear and PEFT: bound = 1 / sqrt(in)
  const double bound = 1.0 / std::sqrt(double(base_->in_features));
  lora_A->weight.uniform_(-bound, bound);
  lora_B->weight.zero_();
}

at::Tensor LoraAdapter::forward(const LinearImpl& base, const at::Tensor& x, const at::Tensor& y,
                                const Ops& ops) const {
  if (!enabled || merged) return y;
  at::Tensor h = (dropout > 0 && base.is_training()) ? at::dropout(x, dropout, /*train=*/true) : x;  // [..., in]
  return y + lora_B->forward(lora_A->forward(h, ops), ops) * scaling;                              // [..., out]
}

at::Tensor LoraAdapter::delta_weight() const {
  at::Tensor a = lora_A->weight.detach().to(at::kFloat);                 // [r, in]
  at::Tensor b = lora_B->weight.detach().to(at::kFloat);                 // [out, r]
  return (at::matmul(b, a) * scaling).to(base_->weight.scalar_type());  // [out, in]
}

void LoraAdapter::merge() {
  if (merged) return;
  if (base_->quantized)
    throw InvalidArgument("cannot merge an adapter into " + base_->quantized->type_name() +
                          " weights kept quantized: keep it unmerged, or load the model without keep_quantized");
  at::NoGradGuard no_grad;
  base_->weight.add_(delta_weight());
  merged = true;
}

void LoraAdapter::unmerge() {
  if (!merged) return;
  at::NoGradGuard no_grad;
  base_->weight.sub_(delta_weight());
  merged = false;
}

// ---------------------------------------------------------------- token rows
TokenRowsImpl::TokenRowsImpl(EmbeddingImpl& embedding, std::vector<int64_t> idx)
    : indices(std::move(idx)), embedding_(&embedding) {
  const at::Tensor& E = embedding.weight;  // [V, C]
  const int64_t V = E.size(0);
  for (int64_t i : indices)
    if (i < 0 || i >= V)
      throw InvalidArgument("trainable token index " + std::to_string(i) + " is outside the vocabulary [0, " +
                            std::to_string(V) + ")");
  auto longs = at::TensorOptions().dtype(at::kLong).device(E.device());
  ids_ = register_buffer("ids", at::tensor(indices, at::kLong).to(E.device()));  // [K]
  at::Tensor rows = E.detach().index_select(0, ids_).clone();                   // [K, C]
  trainable_tokens_delta = register_parameter("trainable_tokens_delta", rows, /*requires_grad=*/false);
  at::Tensor slot = at::full({V}, -1, longs);                                    // [V]
  slot.index_put_({ids_}, at::arange(int64_t(indices.size()), longs));
  slot_of_ = register_buffer("slot_of", slot);
}

at::Tensor TokenRowsImpl::embed(const at::Tensor& ids, const at::Tensor& x) const {
  if (!enabled || merged) return x;
  at::Tensor slot = slot_of_.index({ids});                                           // [B, T], -1 = not adapted
  at::Tensor rows = trainable_tokens_delta.index_select(0, slot.clamp_min(0).flatten())
                        .view(x.sizes()).to(x.scalar_type());                         // [B, T, C]
  return at::where(slot.ge(0).unsqueeze(-1), rows, x);                               // [B, T, C]
}

at::Tensor TokenRowsImpl::project(const at::Tensor& hidden, const at::Tensor& logits, const Ops& ops) const {
  if (!enabled || merged) return logits;
  // A tied head reads the embedding, so the replacement rows are its rows too
  // (as when merged, and as PEFT ties them).
  at::Tensor cols = ops.linear(hidden, trainable_tokens_delta.to(hidden.scalar_type()));  // [..., K]
  return logits.index_copy(-1, ids_, cols.to(logits.scalar_type()));                     // [..., V]
}

void TokenRowsImpl::merge() {
  if (merged) return;
  at::NoGradGuard no_grad;
  at::Tensor& E = embedding_->weight;
  original_rows_ = E.index_select(0, ids_).clone();  // [K, C]
  E.index_copy_(0, ids_, trainable_tokens_delta.detach().to(E.scalar_type()));
  merged = true;
}

void TokenRowsImpl::unmerge() {
  if (!merged) return;
  at::NoGradGuard no_grad;
  at::Tensor& E = embedding_->weight;
  E.index_copy_(0, ids_, original_rows_.to(E.device(), E.scalar_type()));
  original_rows_ = at::Tensor();
  merged = false;
}

}  // namespace flashback
