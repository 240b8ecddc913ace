#include "flashback/config.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"

namespace flashback {

using nlohmann::json;

bool LlamaConfig::is_eos(int64_t id) const {
  return std::find(eos_token_ids.begin(), eos_token_ids.end(), id) != eos_token_ids.end();
}

void LlamaConfig::validate(const std::string& source) const {
  auto bad = [&](const std::string& what) { throw InvalidArgument(source + ": " + what); };
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) bad(std::string(name) + " must be positive (got " + std::to_string(v) + ")");
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  if (num_attention_heads % num_key_value_heads != 0)
    bad("num_attention_heads (" + std::to_string(num_attention_heads) + ") is not a multiple of num_key_value_heads (" +
        std::to_string(num_key_value_heads) + ")");
  if (head_dim % 2 != 0) bad("head_dim must be even for rotary embeddings (got " + std::to_string(head_dim) + ")");
  if (!(rms_norm_eps > 0)) bad("rms_norm_eps must be positive");
  if (!(rope_theta > 0)) bad("rope_theta must be positive");
  if (rope_type != "default" && rope_type != "linear")
    bad("rope scaling '" + rope_type + "' is not supported (only default and linear)");
  if (!(rope_factor > 0)) bad("rope scaling factor must be positive");
  if (bos_token_id >= vocab_size) bad("bos_token_id " + std::to_string(bos_token_id) + " is outside the vocabulary");
  for (int64_t e : eos_token_ids)
    if (e >= vocab_size) bad("eos_token_id " + std::to_string(e) + " is outside the vocabulary");
  if (torch_dtype != "float32" && torch_dtype != "float16" && torch_dtype != "bfloat16")
    bad("torch_dtype '" + torch_dtype + "' is not supported (float32, float16, bfloat16)");
  constexpr int64_t kHuge = int64_t(1) << 31;
  if (vocab_size > kHuge || hidden_size > kHuge || intermediate_size > kHuge || max_position_embeddings > kHuge ||
      num_attention_heads > kHuge || num_key_value_heads > kHuge || head_dim > kHuge || num_hidden_layers > 100000)
    bad("a dimension is implausibly large");
  // num_parameters() in int64 without overflow: 2^44 (17.6 trillion) is far past any checkpoint.
  const long double C = hidden_size, Q = static_cast<long double>(num_attention_heads) * head_dim,
                    KV = static_cast<long double>(num_key_value_heads) * head_dim;
  const long double n = vocab_size * C * 2 + num_hidden_layers * (2 * C * Q + 2 * C * KV + 3 * C * intermediate_size + 2 * C) + C;
  if (n > static_cast<long double>(int64_t(1) << 44))
    bad("the configuration implies " + std::to_string(static_cast<double>(n)) + " parameters: implausibly large");
}

namespace {

int64_t get_int(const json& j, const char* key, const std::string& src, bool required, int64_t fallback) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) throw FormatError(src, std::string("missing required field '") + key + "'");
    return fallback;
  }
  if (!j[key].is_number_integer()) throw FormatError(src, std::string("field '") + key + "' must be an integer");
  return j[key].get<int64_t>();
}

double get_num(const json& j, const char* key, const std::string& src, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) throw FormatError(src, std::string("field '") + key + "' must be a number");
  return j[key].get<double>();
}

void read_rope(const json& j, const std::string& src, LlamaConfig& c) {
  c.rope_theta = get_num(j, "rope_theta", src, c.rope_theta);
  // transformers >= 5: rope_parameters {rope_theta, rope_type, factor}; older: rope_scaling {type, factor}.
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& r = j[key];
    if (!r.is_object()) throw FormatError(src, std::string("field '") + key + "' must be an object");
    c.rope_theta = get_num(r, "rope_theta", src, c.rope_theta);
    std::string type = r.value("rope_type", r.value("type", std::string("default")));
    if (type != "default" && type != "linear")
      throw FormatError(src, "rope scaling type '" + type + "' is not supported (only default and linear)");
    c.rope_type = type;
    c.rope_factor = type == "linear" ? get_num(r, "factor", src, 1.0) : 1.0;
  }
}

}  // namespace

namespace {
LlamaConfig parse_config(const json& j, const std::string& src);
}

LlamaConfig LlamaConfig::from_json(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError(src, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw FormatError(src, "not a JSON object");
  try {
    return parse_config(j, src);
  } catch (const json::exception& e) {
    throw FormatError(src, std::string("unexpected value: ") + e.what());
  }
}

namespace {

LlamaConfig parse_config(const json& j, const std::string& src) {
  if (j.contains("model_type") && j["model_type"] != json("llama"))
    throw FormatError(src, "model_type '" + j["model_type"].dump() + "' is not supported (only \"llama\")");
  if (j.contains("hidden_act") && j["hidden_act"] != json("silu"))
    throw FormatError(src, "hidden_act " + j["hidden_act"].dump() + " is not supported (only \"silu\")");
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (j.value(key, false) == true) throw FormatError(src, std::string(key) + "=true is not supported");
  if (j.value("pretraining_tp", 1) != 1) throw FormatError(src, "pretraining_tp != 1 is not supported");

  LlamaConfig c;
  c.vocab_size = get_int(j, "vocab_size", src, true, 0);
  c.hidden_size = get_int(j, "hidden_size", src, true, 0);
  c.intermediate_size = get_int(j, "intermediate_size", src, true, 0);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", src, true, 0);
  c.num_attention_heads = get_int(j, "num_attention_heads", src, true, 0);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", src, false, c.num_attention_heads);
  c.head_dim = get_int(j, "head_dim", src, false,
                       c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, false, 2048);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  read_rope(j, src, c);
  if (j.contains("tie_word_embeddings")) {
    if (!j["tie_word_embeddings"].is_boolean()) throw FormatError(src, "field 'tie_word_embeddings' must be a boolean");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  c.bos_token_id = get_int(j, "bos_token_id", src, false, 1);
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    c.eos_token_ids.clear();
    if (e.is_array()) {
      for (const auto& x : e) {
        if (!x.is_number_integer()) throw FormatError(src, "field 'eos_token_id' must hold integers");
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(get_int(j, "eos_token_id", src, true, 2));
    }
  }
  for (const char* key : {"torch_dtype", "dtype"})
    if (j.contains(key) && j[key].is_string()) c.torch_dtype = j[key].get<std::string>();
  try {
    c.validate(src);
  } catch (const InvalidArgument& e) {
    throw FormatError(src, std::string(e.what()).substr(src.size() + 2));
  }
  return c;
}

}  // namespace

LlamaConfig LlamaConfig::from_file(const std::string& path) { return from_json(read_file(path), path); }

LlamaConfig LlamaConfig::from_spec(const std::string& spec) {
  LlamaConfig c;
  bool head_dim_set = false;
  size_t i = 0;
  while (i < spec.size()) {
    size_t comma = spec.find(',', i);
    if (comma == std::string::npos) comma = spec.size();
    const std::string item = spec.substr(i, comma - i);
    i = comma + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) throw InvalidArgument("config spec: '" + item + "' is not key=value");
    const std::string key = item.substr(0, eq), val = item.substr(eq + 1);
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(val, &used);
      if (used != val.size()) throw std::invalid_argument(val);
    } catch (const std::exception&) {
      throw InvalidArgument("config spec: '" + key + "' needs a number, got '" + val + "'");
    }
    const auto n = static_cast<int64_t>(v);
    if (key == "hidden") c.hidden_size = n;
    else if (key == "layers") c.num_hidden_layers = n;
    else if (key == "heads") c.num_attention_heads = n;
    else if (key == "kv_heads") c.num_key_value_heads = n;
    else if (key == "ffn") c.intermediate_size = n;
    else if (key == "vocab") c.vocab_size = n;
    else if (key == "max_pos") c.max_position_embeddings = n;
    else if (key == "head_dim") { c.head_dim = n; head_dim_set = true; }
    else if (key == "theta") c.rope_theta = v;
    else if (key == "tied") c.tie_word_embeddings = n != 0;
    else throw InvalidArgument("config spec: unknown key '" + key +
                               "' (hidden, layers, heads, kv_heads, ffn, vocab, max_pos, head_dim, theta, tied)");
  }
  if (!head_dim_set && c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
  c.validate("config spec");
  return c;
}

std::string LlamaConfig::to_json() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["hidden_act"] = "silu";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_type == "linear")
    j["rope_scaling"] = {{"type", "linear"}, {"rope_type", "linear"}, {"factor", rope_factor}};
  else
    j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1)
    j["eos_token_id"] = eos_token_ids[0];
  else
    j["eos_token_id"] = eos_token_ids;
  j["torch_dtype"] = torch_dtype;
  return j.dump(2) + "\n";
}

int64_t LlamaConfig::num_parameters() const {
  const int64_t C = hidden_size, F = intermediate_size;
  const int64_t attn = C * q_dim() + 2 * C * kv_dim() + q_dim() * C;
  const int64_t mlp = 3 * C * F;
  const int64_t per_layer = attn + mlp + 2 * C;
  return vocab_size * C * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * per_layer + C;
}

}  // namespace flashback
