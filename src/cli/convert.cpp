// flashback convert: any supported checkpoint -> an HF model directory.
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "flashback/flashback.hpp"

namespace flashback::cli {

void add_convert(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, out;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("convert", "Write a model as an HF directory (config.json, model.safetensors, tokenizer.model or tokenizer.json)");
  cmd->add_option("--model,-m", a->model, "HF model directory, llama2.c .bin or .gguf")->required();
  cmd->add_option("--tokenizer,-t", a->tokenizer, kTokenizerHelp);
  cmd->add_option("--out,-o", a->out, "output directory")->required();
  cmd->callback([a] {
    Checkpoint ck = read_checkpoint(a->model);
    Tokenizer tok = load_tokenizer(ck, a->tokenizer);
    save_hf_directory(a->out, ck.config, ck.tensors, &tok);
    std::cerr << "wrote " << a->out << " (" << ck.tensors.size() << " tensors, " << ck.config.torch_dtype << ")\n";
  });
}

}  // namespace flashback::cli
