// llama2.c tokenizer.bin: max token length, then (score, length, bytes) per piece; the
// tokenizer it makes is run.
#include "flashback/tokenizer.hpp"
#include "harness.hpp"
#include "tokenizer_checks.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(llama2c_tokenizer) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const Tokenizer tok(parse_llama2c_tokenizer(bytes, "tokenizer.bin"), "tokenizer.bin");
    fuzz::check_tokenizer(tok, "Once upon a time, \xE2\x96\x81 <0x41> \xF0\x9F\x98\x80 \n");
    fuzz::check_tokenizer(tok, bytes.substr(0, 256));
  });
}
