// A model as the front ends (the CLI, the Python package) load one: the
// checkpoint, its tokenizer, the marking tokens, an optional PEFT adapter,
// in one call, so `flashback ralm --model M --adapter A` and
// LlamaForCausalLM.from_pretrained(M, adapter=A) cannot load differently.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "flashback/llama.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

enum class MarksPolicy {
  Add,   // give the model the two marking tokens (mean-initialised rows) unless it has them: needs a tokenizer
  Find,  // use them when the checkpoint has them
  None,  // ignore them
};
MarksPolicy parse_marks_policy(const std::string& name);  // "add" | "find" | "none"

struct PretrainedOptions {
  std::string tokenizer;                // tokenizer.model / .bin; "": found with the model
  bool require_tokenizer = true;        // false: a model without one loads (tokenizer unset)
  std::optional<at::ScalarType> dtype;  // unset: the checkpoint's (float16 -> float32 where unsupported)
  at::Device device = at::kCPU;
  MarksPolicy marks = MarksPolicy::Find;
  std::string adapter;                  // a PEFT adapter directory to load ("": the shipped default, below)
  // With marks == Add and no `adapter`: the adapter shipped for this model
  // (shipped_adapters.hpp), if there is one. false: none.
  bool default_adapter = true;
  std::vector<std::string> adapter_dirs;  // a front end's own places for shipped adapters
  bool merge_adapter = true;            // fold it into the weights (never into weights kept quantized)
  bool keep_quantized = false;          // a GGUF's Q4_0..Q8_0, Q4_K, Q6_K projections stay in blocks (checkpoint.hpp)
};

struct Pretrained {
  LlamaForCausalLM model{nullptr};
  std::optional<Tokenizer> tokenizer;
  MarkingToken marks;  // absent when the model has none
  std::string adapter;        // the adapter directory loaded ("": none)
  bool adapter_default = false;  // it is the shipped default (not asked for)
};

// Every failure is a FormatError or InvalidArgument naming the file.
Pretrained load_pretrained(const std::string& path, const PretrainedOptions& options = {});

}  // namespace flashback
