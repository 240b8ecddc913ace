// The CLI's token printer (generate and ralm stream through it): what it
// prints equals what it collects for --json, including the decoder's final
// flush when generation stops inside a multi-byte character.
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "shared_path.hpp"
#include "token_printer.hpp"

using namespace flashback;

namespace {
std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[256];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}
}  // namespace

TEST_CASE("the token printer prints the decoder's final flush", "[cli]") {
  Tokenizer tok = Tokenizer::from_file(flashback::test::shared("models/stories260K/tok512.model"));
  const std::vector<int32_t> prompt = tok.encode("Hi", /*add_bos=*/true);
  // "日" is not in this vocabulary: byte fallback, <0xE6> <0x97> <0xA5> after a "▁".
  const std::vector<int32_t> ri = tok.encode("\xE6\x97\xA5");
  REQUIRE(ri.size() == 4);
  REQUIRE(tok.id_to_piece(ri[1]) == "<0xE6>");
  const std::vector<int32_t> cut(ri.begin(), ri.end() - 1);  // generation stops inside the character
  const std::string replacement = "\xEF\xBF\xBD";             // U+FFFD per byte, as decode() renders a cut sequence
  REQUIRE(tok.decode(cut) == replacement + replacement);          // (decode() drops a leading space)
  const std::string decoded = " " + replacement + replacement;  // as a continuation of the prompt

  std::FILE* out = std::tmpfile();
  REQUIRE(out != nullptr);
  cli::TokenPrinter printer(tok, "Hi", prompt, out);
  for (int32_t id : cut) printer(id);  // the pending bytes show only when the decoder is flushed
  const std::string text = printer.finish();
  CHECK(text == decoded);
  CHECK(read_all(out) == "Hi" + decoded + "\n");
  std::fclose(out);

  cli::TokenPrinter quiet(tok, "Hi", prompt, nullptr);  // --json: collected, not printed
  for (int32_t id : ri) quiet(id);
  CHECK(quiet.finish() == " \xE6\x97\xA5");
}
