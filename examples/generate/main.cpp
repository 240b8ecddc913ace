// Generation in a page of code: load a model (HF directory, llama2.c .bin or
// GGUF) and its tokenizer, then greedy-decode a continuation of a prompt.
//   usage: generate MODEL PROMPT [N]
#include <flashback/flashback.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL PROMPT [N]\n", argv[0]);
    return 2;
  }
  try {
    flashback::init_threads();                                     // all cores
    flashback::Checkpoint ck = flashback::read_checkpoint(argv[1]);  // config + weights, validated
    flashback::Tokenizer tok = flashback::load_tokenizer(ck);        // found next to the model
    flashback::LlamaForCausalLM model = flashback::load_model(ck);

    std::vector<int32_t> ids = tok.encode_with_specials(argv[2]);  // BOS when the tokenizer adds one
    std::vector<int64_t> prompt(ids.begin(), ids.end());
    flashback::KVCacheStore cache = model->make_cache(/*batch=*/1);  // per-sequence state

    flashback::GenerateOptions options;
    options.max_new_tokens = argc > 3 ? std::stoi(argv[3]) : 32;
    flashback::DecodeStream text(tok);
    text.skip(ids);  // the prompt is printed as given
    std::fputs(argv[2], stdout);
    flashback::generate(*model, cache, prompt, options, [&](int64_t id) {
      std::fputs(text.put(static_cast<int32_t>(id)).c_str(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("%s\n", text.flush().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
