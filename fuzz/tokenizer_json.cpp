// HF tokenizer.json (BPE model, vocab, merges as strings or pairs, added_tokens, pre-tokenizer
// and normalizer forms); what parses must write and parse back the same, and its tokenizer runs.
#include "flashback/tokenizer.hpp"
#include "harness.hpp"
#include "tokenizer_checks.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(tokenizer_json) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const BpeModel m = parse_tokenizer_json(text, "tokenizer.json");
    const Tokenizer tok(m, "tokenizer.json");
    const BpeModel again = parse_tokenizer_json(write_tokenizer_json(m), "again.json");
    FUZZ_CHECK(again.tokens == m.tokens && again.types == m.types && again.merges == m.merges && again.pre == m.pre);
    FUZZ_CHECK(again.bos_id == m.bos_id && again.eos_id == m.eos_id && again.unk_id == m.unk_id);
    fuzz::check_tokenizer(tok, "Hello world!  It's 2024: \xC3\xBC\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC <|endoftext|>\n\n");
  });
}
