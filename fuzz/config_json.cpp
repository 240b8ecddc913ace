// HF config.json of a Llama-family model (both transformers 4 and 5 spellings: rope_theta or
// rope_parameters, torch_dtype or dtype, eos as a number or a list); what parses validates and
// writes back the same.
#include "flashback/config.hpp"
#include "harness.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(config_json) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const LlamaConfig c = LlamaConfig::from_json(text, "config.json");
    c.validate("config.json");
    const LlamaConfig d = LlamaConfig::from_json(c.to_json(), "again.json");
    FUZZ_CHECK(d.to_json() == c.to_json());
    (void)c.num_parameters();
  });
}
