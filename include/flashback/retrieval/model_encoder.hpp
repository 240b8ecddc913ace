// The default dense encoder: the decoder's final hidden states, mean-pooled
// over the text's tokens (no BOS), L2-normalised. Thread-safe: encode() only
// reads the model (a forward without a cache) and the tokenizer.
#pragma once

#include <memory>
#include <string>

#include "flashback/llama.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

class ModelEncoder : public TextEncoder {
 public:
  // `max_tokens`: texts are cut to this many tokens before encoding.
  ModelEncoder(LlamaForCausalLM model, Tokenizer tokenizer, std::string description, int64_t max_tokens = 128);
  int64_t dim() const override;
  std::vector<float> encode(const std::vector<std::string>& texts) override;
  std::string describe() const override { return description_; }

 private:
  LlamaForCausalLM model_;
  Tokenizer tokenizer_;
  std::string description_;
  int64_t max_tokens_;
};

}  // namespace flashback
