// Attaching, merging and removing a model's adapter (lora.hpp). The adapter's
// state lives in the modules it attaches to; nothing here keeps a second copy.
#include <algorithm>

#include "flashback/error.hpp"
#include "flashback/llama.hpp"
#include "flashback/lora.hpp"
#include "flashback/strings.hpp"

namespace flashback {

Linear& projection(DecoderLayerImpl& layer, const std::string& name) {
  if (name == "q_proj") return layer.self_attn->q_proj;
  if (name == "k_proj") return layer.self_attn->k_proj;
  if (name == "v_proj") return layer.self_attn->v_proj;
  if (name == "o_proj") return layer.self_attn->o_proj;
  if (name == "gate_proj") return layer.mlp->gate_proj;
  if (name == "up_proj") return layer.mlp->up_proj;
  if (name == "down_proj") return layer.mlp->down_proj;
  throw InvalidArgument("unknown LoRA target module '" + name + "'");
}

std::string projection_path(int64_t layer, const std::string& name) {
  const bool mlp = name == "gate_proj" || name == "up_proj" || name == "down_proj";
  return "model.layers." + std::to_string(layer) + (mlp ? ".mlp." : ".self_attn.") + name;
}

std::vector<std::pair<std::string, LoraAdapter*>> lora_layers(const LlamaForCausalLMImpl& model) {
  std::vector<std::pair<std::string, LoraAdapter*>> out;
  for (int64_t l = 0; l < model.model->num_layers(); ++l)
    for (const auto& name : lora_target_names())
      if (auto* lora = dynamic_cast<LoraAdapter*>(projection(model.model->layer(l), name)->adapter.get()))
        out.emplace_back(projection_path(l, name), lora);
  return out;
}

TokenRowsImpl* token_rows(const LlamaForCausalLMImpl& model) {
  return dynamic_cast<TokenRowsImpl*>(model.model->embed_tokens->override_rows.get());
}

namespace {

void require_adapter(const LlamaForCausalLMImpl& model) {
  if (!has_lora(model)) throw InvalidArgument("the model has no adapter (add_lora or load_adapter first)");
}

// Detaches every adapter (after merging, the base weights keep it).
void detach_all(LlamaForCausalLMImpl& model) {
  for (int64_t l = 0; l < model.model->num_layers(); ++l)
    for (const auto& name : lora_target_names()) {
      LinearImpl& p = *projection(model.model->layer(l), name);
      if (!p.adapter) continue;
      p.unregister_module("lora_A");
      p.unregister_module("lora_B");
      p.adapter = nullptr;
    }
  EmbeddingImpl& emb = *model.model->embed_tokens;
  if (emb.override_rows) {
    emb.unregister_module("token_adapter");
    emb.override_rows = nullptr;
  }
}

}  // namespace

void add_lora(LlamaForCausalLMImpl& model, const LoraConfig& config) {
  config.validate();
  if (has_lora(model)) throw InvalidArgument("the model already has an adapter");
  const int64_t V = model.config().vocab_size;
  for (int64_t i : config.trainable_token_indices)
    if (i < 0 || i >= V)
      throw InvalidArgument("trainable token index " + std::to_string(i) + " is outside the model's vocabulary [0, " +
                            std::to_string(V) + ")");
  for (int64_t l = 0; l < model.model->num_layers(); ++l)
    for (const auto& name : config.target_modules) {
      LinearImpl& p = *projection(model.model->layer(l), name);
      p.adapter = std::make_shared<LoraAdapter>(p, config.r, config.alpha, config.dropout);
    }
  if (!config.trainable_token_indices.empty()) {
    EmbeddingImpl& emb = *model.model->embed_tokens;
    TokenRows rows(emb, config.trainable_token_indices);
    rows->train(model.is_training());
    emb.override_rows = emb.register_module("token_adapter", rows.ptr());
  }
}

bool has_lora(const LlamaForCausalLMImpl& model) { return !lora_layers(model).empty() || token_rows(model); }

LoraConfig lora_config(const LlamaForCausalLMImpl& model) {
  require_adapter(model);
  LoraConfig c;
  c.target_modules.clear();
  const auto layers = lora_layers(model);
  if (!layers.empty()) {
    const LoraAdapter& first = *layers.front().second;
    c.r = first.r;
    c.alpha = first.alpha;
    c.dropout = first.dropout;
  }
  for (const auto& name : lora_target_names())
    if (std::any_of(layers.begin(), layers.end(), [&](const auto& p) { return ends_with(p.first, "." + name); }))
      c.target_modules.push_back(name);
  if (const TokenRowsImpl* rows = token_rows(model)) c.trainable_token_indices = rows->indices;
  return c;
}

void mark_only_adapter_trainable(LlamaForCausalLMImpl& model) {
  require_adapter(model);
  for (auto& p : model.parameters()) p.requires_grad_(false);
  for (auto& [name, lora] : lora_layers(model)) {
    lora->lora_A->weight.requires_grad_(true);
    lora->lora_B->weight.requires_grad_(true);
  }
  if (TokenRowsImpl* rows = token_rows(model)) rows->trainable_tokens_delta.requires_grad_(true);
}

void set_adapter_enabled(LlamaForCausalLMImpl& model, bool enabled) {
  require_adapter(model);
  TokenRowsImpl* rows = token_rows(model);
  const auto layers = lora_layers(model);
  const bool merged = (rows && rows->merged) ||
                      std::any_of(layers.begin(), layers.end(), [](const auto& p) { return p.second->merged; });
  if (merged && !enabled) throw InvalidArgument("unmerge the adapter before disabling it");
  for (auto& [name, lora] : layers) lora->enabled = enabled;
  if (rows) rows->enabled = enabled;
}

void merge_adapter(LlamaForCausalLMImpl& model) {
  require_adapter(model);
  for (auto& [name, lora] : lora_layers(model)) lora->merge();
  if (TokenRowsImpl* rows = token_rows(model)) rows->merge();
}

void unmerge_adapter(LlamaForCausalLMImpl& model) {
  require_adapter(model);
  for (auto& [name, lora] : lora_layers(model)) lora->unmerge();
  if (TokenRowsImpl* rows = token_rows(model)) rows->unmerge();
}

void merge_and_unload(LlamaForCausalLMImpl& model) {
  merge_adapter(model);
  detach_all(model);
}

}  // namespace flashback
