// flashback convert: any supported checkpoint -> an HF model directory or a GGUF file.
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "flashback/dtype.hpp"
#include "flashback/flashback.hpp"

namespace flashback::cli {

void add_convert(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, out, to = "hf", dtype = "auto";
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Write a model as an HF directory (config.json, model.safetensors, tokenizer.model or tokenizer.json) "
                 "or as one GGUF file llama.cpp runs");
  cmd->add_option("--model,-m", a->model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_option("--tokenizer,-t", a->tokenizer, kTokenizerHelp);
  cmd->add_option("--out,-o", a->out, "output directory (hf) or file (gguf)")->required();
  cmd->add_option("--to", a->to, "hf or gguf")->check(CLI::IsMember({"hf", "gguf"}));
  cmd->add_option("--dtype", a->dtype,
                  "weights written as: auto (the checkpoint's; a quantized GGUF's are dequantized to fp32), fp32, bf16, fp16");
  cmd->callback([a] {
    const std::optional<at::ScalarType> asked = parse_dtype(a->dtype);
    Checkpoint ck = read_checkpoint(a->model);
    Tokenizer tok = load_tokenizer(ck, a->tokenizer);
    auto emb = ck.tensors.find("model.embed_tokens.weight");  // the file's weight type
    const at::ScalarType dtype = asked ? *asked : emb != ck.tensors.end() ? emb->second.scalar_type() : at::kFloat;
    if (a->to == "gguf") {
      save_gguf(a->out, ck.config, ck.tensors, tok, dtype);
    } else {
      if (asked)
        for (auto& [name, t] : ck.tensors)
          if (t.is_floating_point()) t = t.to(dtype);
      save_hf_directory(a->out, ck.config, ck.tensors, &tok);
    }
    std::cerr << "wrote " << a->out << " (" << a->to << ", " << ck.tensors.size() << " tensors, "
              << c10::toString(dtype) << ")\n";
  });
}

}  // namespace flashback::cli
