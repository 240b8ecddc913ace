// PEFT adapter directories (peft.hpp).
#include "flashback/peft.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_dir.hpp"
#include "flashback/io/atomic_file.hpp"
#include "flashback/llama.hpp"

namespace flashback {

namespace fs = std::filesystem;

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

std::string adapter_config_json(const LoraConfig& c, const std::string& base_model) {
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
  return j.dump(2) + "\n";
}

void save_adapter(const LlamaForCausalLMImpl& model, const std::string& dir, const std::string& base_model,
                  std::optional<at::ScalarType> dtype) {
  const LoraConfig c = lora_config(model);
  std::map<std::string, at::Tensor> tensors;
  for (auto& [name, lora] : lora_layers(model)) {
    tensors[kPrefix + name + ".lora_A.weight"] = lora->lora_A->weight;  // [r, in]
    tensors[kPrefix + name + ".lora_B.weight"] = lora->lora_B->weight;  // [out, r]
  }
  if (TokenRowsImpl* rows = token_rows(model)) tensors[kTokenKey] = rows->trainable_tokens_delta;  // [K, C]
  if (dtype)
    for (auto& [name, t] : tensors) t = t.detach().to(*dtype);

  const std::string config = adapter_config_json(c, base_model);
  write_directory_atomic(dir, kConfigFile, "a PEFT adapter", [&](const std::string& tmp) {
    save_safetensors(tmp + "/" + kWeightsFile, tensors, {{"format", "pt"}});
    write_file_atomic(tmp + "/" + kConfigFile, config);
  });
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

void load_adapter(LlamaForCausalLMImpl& model, const std::string& dir, bool merge) {
  if (has_lora(model)) throw InvalidArgument("the model already has an adapter");
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
  for (int64_t l = 0; l < model.model->num_layers(); ++l)
    for (const auto& name : c.target_modules) {
      const Linear& p = projection(model.model->layer(l), name);
      const std::string key = kPrefix + projection_path(l, name);
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
  if (TokenRowsImpl* rows = token_rows(model)) rows->trainable_tokens_delta.copy_(tensors.at(kTokenKey));
  if (merge) merge_adapter(model);
}

}  // namespace flashback
