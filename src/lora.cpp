#include "flashback/lora.hpp"

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_file.hpp"
#include "flashback/llama.hpp"

namespace flashback {

namespace fs = std::filesystem;

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

// ---------------------------------------------------------------- LoRA layer
LoraLinearImpl::LoraLinearImpl(const LinearImpl& base, int64_t r, double alpha, double dropout)
    : LinearImpl(base.weight), r(r), alpha(alpha), scaling(alpha / double(r)), dropout(dropout) {
  auto opts = weight.options();
  lora_A = register_module("lora_A", Linear(in_features, r, opts));   // weight [r, in]
  lora_B = register_module("lora_B", Linear(r, out_features, opts));  // weight [out, r]
  reset_parameters();
}

void LoraLinearImpl::reset_parameters() {
  at::NoGradGuard no_grad;
  // kaiming_uniform_(a = sqrt(5)) as nn.Linear and PEFT: bound = 1 / sqrt(in)
  const double bound = 1.0 / std::sqrt(double(in_features));
  lora_A->weight.uniform_(-bound, bound);
  lora_B->weight.zero_();
}

at::Tensor LoraLinearImpl::forward(const at::Tensor& x) {
  at::Tensor y = flashback::linear(x, weight);  // [..., out]
  if (!enabled || merged) return y;
  at::Tensor h = (dropout > 0 && is_training()) ? at::dropout(x, dropout, /*train=*/true) : x;  // [..., in]
  return y + lora_B->forward(lora_A->forward(h)) * scaling;  // [..., out]
}

at::Tensor LoraLinearImpl::delta_weight() const {
  at::Tensor a = lora_A->weight.detach().to(at::kFloat);  // [r, in]
  at::Tensor b = lora_B->weight.detach().to(at::kFloat);  // [out, r]
  return (at::matmul(b, a) * scaling).to(weight.scalar_type());  // [out, in]
}

void LoraLinearImpl::merge() {
  if (merged) return;
  at::NoGradGuard no_grad;
  weight.add_(delta_weight());
  merged = true;
}

void LoraLinearImpl::unmerge() {
  if (!merged) return;
  at::NoGradGuard no_grad;
  weight.sub_(delta_weight());
  merged = false;
}

// ---------------------------------------------------------------- token rows
TokenAdapterImpl::TokenAdapterImpl(const at::Tensor& embedding, std::vector<int64_t> idx) : indices(std::move(idx)) {
  const int64_t V = embedding.size(0);
  for (int64_t i : indices)
    if (i < 0 || i >= V)
      throw InvalidArgument("trainable token index " + std::to_string(i) + " is outside the vocabulary [0, " +
                            std::to_string(V) + ")");
  at::Tensor ids = at::tensor(indices, at::kLong).to(embedding.device());  // [K]
  at::Tensor rows = embedding.detach().index_select(0, ids).clone();       // [K, C]
  trainable_tokens_delta = register_parameter("trainable_tokens_delta", rows, /*requires_grad=*/false);
  slot_of_ = at::full({V}, -1, at::TensorOptions().dtype(at::kLong).device(embedding.device()));  // [V]
  slot_of_.index_put_({ids}, at::arange(int64_t(indices.size()), slot_of_.options()));
}

at::Tensor TokenAdapterImpl::forward(const at::Tensor& ids, const at::Tensor& x) {
  if (!enabled || merged) return x;
  if (slot_of_.device() != ids.device()) slot_of_ = slot_of_.to(ids.device());
  at::Tensor slot = slot_of_.index({ids});                                          // [B, T], -1 = not adapted
  at::Tensor rows = trainable_tokens_delta.index_select(0, slot.clamp_min(0).flatten())
                        .view(x.sizes()).to(x.scalar_type());                        // [B, T, C]
  return at::where(slot.ge(0).unsqueeze(-1), rows, x);                              // [B, T, C]
}

void TokenAdapterImpl::merge(at::Tensor& embedding) {
  if (merged) return;
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor(indices, at::kLong).to(embedding.device());
  original_rows_ = embedding.index_select(0, ids).clone();  // [K, C]
  embedding.index_copy_(0, ids, trainable_tokens_delta.detach().to(embedding.scalar_type()));
  merged = true;
}

void TokenAdapterImpl::unmerge(at::Tensor& embedding) {
  if (!merged) return;
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor(indices, at::kLong).to(embedding.device());
  embedding.index_copy_(0, ids, original_rows_.to(embedding.device(), embedding.scalar_type()));
  original_rows_ = at::Tensor();
  merged = false;
}

// ---------------------------------------------------------------- model surgery
namespace {

// The projection slot `name` of one layer.
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

torch::nn::Module& parent_of(DecoderLayerImpl& layer, const std::string& name) {
  if (name == "gate_proj" || name == "up_proj" || name == "down_proj") return *layer.mlp;
  return *layer.self_attn;
}

std::string layer_prefix(size_t l, const std::string& name) {
  const bool mlp = name == "gate_proj" || name == "up_proj" || name == "down_proj";
  return "model.layers." + std::to_string(l) + (mlp ? ".mlp." : ".self_attn.") + name;
}

// Every LoRA layer with its HF name ("model.layers.0.self_attn.q_proj").
std::vector<std::pair<std::string, LoraLinearImpl*>> lora_layers(const LlamaModelImpl& model) {
  std::vector<std::pair<std::string, LoraLinearImpl*>> out;
  if (!model.adapter) return out;
  for (size_t l = 0; l < model.model->layer_list.size(); ++l)
    for (const auto& name : model.adapter->target_modules) {
      auto& layer = const_cast<DecoderLayerImpl&>(*model.model->layer_list[l]);
      auto* lora = dynamic_cast<LoraLinearImpl*>(projection(layer, name).get());
      if (lora) out.emplace_back(layer_prefix(l, name), lora);
    }
  return out;
}

void require_adapter(const LlamaModelImpl& model) {
  if (!model.adapter) throw InvalidArgument("the model has no adapter (add_lora or load_adapter first)");
}

}  // namespace

void add_lora(LlamaModelImpl& model, const LoraConfig& config) {
  config.validate();
  if (model.adapter) throw InvalidArgument("the model already has an adapter");
  const int64_t V = model.config().vocab_size;
  for (int64_t i : config.trainable_token_indices)
    if (i < 0 || i >= V)
      throw InvalidArgument("trainable token index " + std::to_string(i) + " is outside the model's vocabulary [0, " +
                            std::to_string(V) + ")");
  for (auto& layer : model.model->layer_list)
    for (const auto& name : config.target_modules) {
      Linear& slot = projection(*layer, name);
      auto lora = std::make_shared<LoraLinearImpl>(*slot, config.r, config.alpha, config.dropout);
      lora->train(model.is_training());
      parent_of(*layer, name).replace_module(name, lora);
      slot = Linear(std::static_pointer_cast<LinearImpl>(lora));
    }
  if (!config.trainable_token_indices.empty()) {
    model.model->token_adapter = model.model->embed_tokens->register_module(
        "token_adapter", TokenAdapter(model.model->embed_tokens_weight, config.trainable_token_indices));
  }
  model.adapter = std::make_shared<const LoraConfig>(config);
}

bool has_lora(const LlamaModelImpl& model) { return model.adapter != nullptr; }

const LoraConfig& lora_config(const LlamaModelImpl& model) {
  require_adapter(model);
  return *model.adapter;
}

void mark_only_adapter_trainable(LlamaModelImpl& model) {
  require_adapter(model);
  for (auto& p : model.parameters()) p.requires_grad_(false);
  for (auto& [name, lora] : lora_layers(model)) {
    lora->lora_A->weight.requires_grad_(true);
    lora->lora_B->weight.requires_grad_(true);
  }
  if (model.model->token_adapter) model.model->token_adapter->trainable_tokens_delta.requires_grad_(true);
}

void set_adapter_enabled(LlamaModelImpl& model, bool enabled) {
  require_adapter(model);
  for (auto& [name, lora] : lora_layers(model)) {
    if (lora->merged && !enabled) throw InvalidArgument("unmerge the adapter before disabling it");
    lora->enabled = enabled;
  }
  if (model.model->token_adapter) {
    if (model.model->token_adapter->merged && !enabled)
      throw InvalidArgument("unmerge the adapter before disabling it");
    model.model->token_adapter->enabled = enabled;
  }
}

void merge_adapter(LlamaModelImpl& model) {
  require_adapter(model);
  for (auto& [name, lora] : lora_layers(model)) lora->merge();
  if (model.model->token_adapter) model.model->token_adapter->merge(model.model->embed_tokens_weight);
}

void unmerge_adapter(LlamaModelImpl& model) {
  require_adapter(model);
  for (auto& [name, lora] : lora_layers(model)) lora->unmerge();
  if (model.model->token_adapter) model.model->token_adapter->unmerge(model.model->embed_tokens_weight);
}

void merge_and_unload(LlamaModelImpl& model) {
  merge_adapter(model);
  for (auto& layer : model.model->layer_list)
    for (const auto& name : model.adapter->target_modules) {
      Linear& slot = projection(*layer, name);
      auto plain = std::make_shared<LinearImpl>(slot->weight);
      parent_of(*layer, name).replace_module(name, plain);
      slot = Linear(plain);
    }
  if (model.model->token_adapter) {
    model.model->embed_tokens->unregister_module("token_adapter");
    model.model->token_adapter = nullptr;
  }
  model.adapter = nullptr;
}

// ---------------------------------------------------------------- PEFT files
namespace {

const char* kConfigFile = "adapter_config.json";
const char* kWeightsFile = "adapter_model.safetensors";
const std::string kPrefix = "base_model.model.";
const std::string kTokenKey = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta";

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

void save_adapter(const LlamaModelImpl& model, const std::string& dir, const std::string& base_model) {
  const LoraConfig& c = lora_config(model);
  std::map<std::string, at::Tensor> tensors;
  for (auto& [name, lora] : lora_layers(model)) {
    tensors[kPrefix + name + ".lora_A.weight"] = lora->lora_A->weight;  // [r, in]
    tensors[kPrefix + name + ".lora_B.weight"] = lora->lora_B->weight;  // [out, r]
  }
  if (model.model->token_adapter) tensors[kTokenKey] = model.model->token_adapter->trainable_tokens_delta;  // [K, C]

  nlohmann::ordered_json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["base_model_name_or_path"] = base_model.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(base_model);
  j["r"] = c.r;
  j["lora_alpha"] = c.alpha;
  j["lora_dropout"] = c.dropout;
  j["target_modules"] = c.target_modules;
  j["trainable_token_indices"] =
      c.trainable_token_indices.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(c.trainable_token_indices);
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["use_rslora"] = false;
  j["use_dora"] = false;
  j["modules_to_save"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["rank_pattern"] = nlohmann::ordered_json::object();
  j["alpha_pattern"] = nlohmann::ordered_json::object();
  j["revision"] = nullptr;

  // Write a sibling temporary directory, then swap it in by rename.
  fs::path target = fs::absolute(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  make_directories(target.parent_path().string());
  const std::string suffix = "." + std::to_string(::getpid());
  fs::path tmp = target.string() + ".tmp" + suffix, old = target.string() + ".old" + suffix;
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    make_directories(tmp.string());
    save_safetensors((tmp / kWeightsFile).string(), tensors, {{"format", "pt"}});
    write_file_atomic((tmp / kConfigFile).string(), j.dump(2) + "\n");
    if (fs::exists(target)) {
      if (!fs::is_directory(target)) throw Error(target.string() + ": exists and is not a directory");
      fs::rename(target, old);
    }
    fs::rename(tmp, target);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error(target.string() + ": cannot write the adapter: " + e.what());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fs::remove_all(old, ec);
}

LoraConfig read_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kConfigFile).string();
  if (!fs::is_directory(dir)) throw FormatError(dir, "not an adapter directory (no such directory)");
  if (!fs::exists(path)) throw FormatError(path, "missing (an adapter directory holds adapter_config.json)");
  nlohmann::json j;
  try {
    const std::string text = read_file(path);
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw FormatError(path, "not a JSON object");
  auto get = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return (it == j.end() || it->is_null()) ? nullptr : &*it;
  };
  auto truthy = [&](const char* key) {
    const auto* v = get(key);
    return v && v->is_boolean() && v->get<bool>();
  };
  auto nonempty = [&](const char* key) {
    const auto* v = get(key);
    return v && !(v->is_object() && v->empty()) && !(v->is_array() && v->empty());
  };
  try {
    const auto* type = get("peft_type");
    if (!type || !type->is_string() || type->get<std::string>() != "LORA")
      throw FormatError(path, "peft_type must be \"LORA\"");
    if (truthy("use_dora")) throw FormatError(path, "DoRA adapters are not supported");
    if (truthy("use_rslora")) throw FormatError(path, "rsLoRA scaling is not supported");
    if (truthy("fan_in_fan_out")) throw FormatError(path, "fan_in_fan_out adapters (GPT-2 Conv1D) do not apply to Llama");
    if (nonempty("rank_pattern") || nonempty("alpha_pattern"))
      throw FormatError(path, "per-module rank_pattern/alpha_pattern is not supported");
    if (nonempty("layers_to_transform")) throw FormatError(path, "layers_to_transform is not supported");
    if (nonempty("modules_to_save")) throw FormatError(path, "modules_to_save is not supported");
    if (const auto* b = get("bias"); b && (!b->is_string() || b->get<std::string>() != "none"))
      throw FormatError(path, "LoRA bias terms are not supported (bias must be \"none\")");

    LoraConfig c;
    const auto* r = get("r");
    if (!r || !r->is_number_integer()) throw FormatError(path, "missing integer 'r'");
    c.r = r->get<int64_t>();
    const auto* alpha = get("lora_alpha");
    c.alpha = alpha && alpha->is_number() ? alpha->get<double>() : double(c.r);
    const auto* dropout = get("lora_dropout");
    c.dropout = dropout && dropout->is_number() ? dropout->get<double>() : 0.0;
    const auto* targets = get("target_modules");
    if (!targets) throw FormatError(path, "missing 'target_modules'");
    if (targets->is_string()) {
      const std::string t = targets->get<std::string>();
      if (t == "all-linear")
        c.target_modules = lora_target_names();
      else
        c.target_modules = {t};
    } else if (targets->is_array()) {
      c.target_modules.clear();
      for (const auto& t : *targets) {
        if (!t.is_string()) throw FormatError(path, "target_modules must hold strings");
        c.target_modules.push_back(t.get<std::string>());
      }
    } else {
      throw FormatError(path, "target_modules must be a list of module names");
    }
    // Keep a canonical order (q, k, v, o, gate, up, down).
    std::vector<std::string> ordered;
    for (const auto& n : lora_target_names())
      if (std::find(c.target_modules.begin(), c.target_modules.end(), n) != c.target_modules.end())
        ordered.push_back(n);
    for (const auto& t : c.target_modules)
      if (std::find(ordered.begin(), ordered.end(), t) == ordered.end())
        throw FormatError(path, "unknown LoRA target module '" + t +
                                    "' (flashback adapts q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
    c.target_modules = ordered;
    if (const auto* t = get("trainable_token_indices")) {
      const nlohmann::json* list = t;
      if (t->is_object()) {
        if (t->size() != 1 || !t->contains("embed_tokens"))
          throw FormatError(path, "trainable_token_indices may only name embed_tokens");
        list = &(*t)["embed_tokens"];
      }
      if (!list->is_array()) throw FormatError(path, "trainable_token_indices must be a list of token ids");
      for (const auto& i : *list) {
        if (!i.is_number_integer()) throw FormatError(path, "trainable_token_indices must hold integers");
        c.trainable_token_indices.push_back(i.get<int64_t>());
      }
    }
    c.validate(path);
    return c;
  } catch (const InvalidArgument& e) {
    throw FormatError(path, e.what());
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path, std::string("bad value: ") + e.what());
  }
}

void load_adapter(LlamaModelImpl& model, const std::string& dir, bool merge) {
  if (model.adapter) throw InvalidArgument("the model already has an adapter");
  const LoraConfig c = read_adapter_config(dir);
  const std::string cpath = (fs::path(dir) / kConfigFile).string();
  const std::string wpath = (fs::path(dir) / kWeightsFile).string();
  const int64_t V = model.config().vocab_size, C = model.config().hidden_size;
  for (int64_t i : c.trainable_token_indices)
    if (i < 0 || i >= V)
      throw FormatError(cpath, "trainable token " + std::to_string(i) + " is outside the model's vocabulary of " +
                                   std::to_string(V) + " (a base model without the marking tokens? load it with marks)");
  if (!fs::exists(wpath)) throw FormatError(wpath, "missing (the adapter's weights)");
  std::map<std::string, at::Tensor> tensors = load_safetensors(wpath);

  // Every expected tensor, with its shape, before the model is touched.
  std::map<std::string, std::vector<int64_t>> expected;
  for (size_t l = 0; l < model.model->layer_list.size(); ++l)
    for (const auto& name : c.target_modules) {
      const Linear& p = projection(*model.model->layer_list[l], name);
      const std::string key = kPrefix + layer_prefix(l, name);
      expected[key + ".lora_A.weight"] = {c.r, p->in_features};
      expected[key + ".lora_B.weight"] = {p->out_features, c.r};
    }
  if (!c.trainable_token_indices.empty()) expected[kTokenKey] = {int64_t(c.trainable_token_indices.size()), C};
  for (const auto& [key, shape] : expected) {
    auto it = tensors.find(key);
    if (it == tensors.end())
      throw FormatError(wpath, "missing tensor '" + key + "' (an adapter for another architecture?)");
    if (it->second.sizes().vec() != shape)
      throw FormatError(wpath, "tensor '" + key + "' has shape " + shape_str(it->second.sizes()) + " but the model needs " +
                                   shape_str(shape) + " (r = " + std::to_string(c.r) +
                                   " in adapter_config.json; an adapter for another architecture or rank?)");
    if (!at::isFloatingType(it->second.scalar_type()))
      throw FormatError(wpath, "tensor '" + key + "' is not floating point");
    if (!at::isfinite(it->second.to(at::kFloat)).all().item<bool>())
      throw FormatError(wpath, "tensor '" + key + "' holds NaN or infinite values");
  }
  for (const auto& [key, t] : tensors)
    if (!expected.count(key))
      throw FormatError(wpath, "unexpected tensor '" + key + "' (an adapter for another architecture or config?)");

  add_lora(model, c);
  at::NoGradGuard no_grad;
  for (auto& [name, lora] : lora_layers(model)) {
    lora->lora_A->weight.copy_(tensors.at(kPrefix + name + ".lora_A.weight"));
    lora->lora_B->weight.copy_(tensors.at(kPrefix + name + ".lora_B.weight"));
  }
  if (model.model->token_adapter) model.model->token_adapter->trainable_tokens_delta.copy_(tensors.at(kTokenKey));
  if (merge) merge_adapter(model);
}

}  // namespace flashback
