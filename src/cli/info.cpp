// flashback info: what a checkpoint holds.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flashback/flashback.hpp"

namespace flashback::cli {

void add_info(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("info", "Print a model's config, parameter count and memory");
  cmd->add_option("--model,-m", *model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_flag("--json", *json, "print JSON");
  cmd->callback([model, json] {
    Checkpoint ck = read_checkpoint(*model);
    const LlamaConfig& c = ck.config;
    int64_t params = 0, bytes = 0;
    for (const auto& [name, t] : ck.tensors) {
      if (c.tie_word_embeddings && name == "lm_head.weight") continue;
      params += t.numel();
      bytes += static_cast<int64_t>(t.nbytes());
    }
    const at::ScalarType dt = resolve_dtype(c, {});
    const int64_t elem = static_cast<int64_t>(c10::elementSize(dt));
    const int64_t kv_per_token = 2 * c.num_hidden_layers * c.kv_dim() * elem;
    nlohmann::ordered_json j;
    j["path"] = ck.path;
    j["format"] = ck.format;
    j["config"] = nlohmann::json::parse(c.to_json());
    j["parameters"] = params;
    j["file_weight_bytes"] = bytes;
    j["compute_dtype"] = std::string(c10::toString(dt));
    j["weight_bytes_in_compute_dtype"] = params * elem;
    j["kv_cache_bytes_per_token"] = kv_per_token;
    j["kv_cache_bytes_at_max_position"] = kv_per_token * c.max_position_embeddings;
    j["embedded_vocab"] = ck.tokenizer ? static_cast<int64_t>(ck.tokenizer->vocab_size()) : 0;
    if (*json) {
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::cout << "model      " << ck.path << " (" << ck.format << ")\n"
              << "layers     " << c.num_hidden_layers << ", hidden " << c.hidden_size << ", ffn "
              << c.intermediate_size << ", heads " << c.num_attention_heads << " (kv " << c.num_key_value_heads
              << ", head_dim " << c.head_dim << ")\n"
              << "vocab      " << c.vocab_size << (c.tie_word_embeddings ? " (tied head)" : "") << ", max positions "
              << c.max_position_embeddings << ", rope theta " << c.rope_theta << ", rms eps " << c.rms_norm_eps
              << "\n"
              << "parameters " << params << " (" << bytes / 1e6 << " MB on disk, " << c.torch_dtype << ")\n"
              << "compute    " << c10::toString(dt) << ": weights " << params * elem / 1e6 << " MB, KV cache "
              << kv_per_token / 1e3 << " kB/token (" << kv_per_token * c.max_position_embeddings / 1e6 << " MB at "
              << c.max_position_embeddings << ")\n";
  });
}

}  // namespace flashback::cli
