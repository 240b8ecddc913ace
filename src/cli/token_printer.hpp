// The one way the CLI shows generated text: the prompt as given, then each
// token's text as it is chosen, then whatever the decoder still held at the
// end (a byte sequence cut short: U+FFFD per byte, as decode() gives). With
// no `out` it only collects the text (for --json).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "flashback/tokenizer.hpp"

namespace flashback::cli {

class TokenPrinter {
 public:
  TokenPrinter(const Tokenizer& tok, const std::string& prompt, const std::vector<int32_t>& prompt_ids, std::FILE* out)
      : stream_(tok), out_(out) {
    stream_.skip(prompt_ids);  // the prompt is shown as given, the rest decodes as its continuation
    write(prompt);
  }

  // The on_token callback of the generation loop.
  bool operator()(int64_t id) {
    std::string piece = stream_.put(static_cast<int32_t>(id));
    text_ += piece;
    write(piece);
    return true;
  }

  // Flushes the decoder (printing the tail) and ends the line; returns the generated text.
  const std::string& finish() {
    std::string tail = stream_.flush();
    text_ += tail;
    write(tail);
    write("\n");
    return text_;
  }

 private:
  void write(const std::string& s) {
    if (!out_) return;
    std::fwrite(s.data(), 1, s.size(), out_);
    std::fflush(out_);
  }

  DecodeStream stream_;
  std::string text_;
  std::FILE* out_;
};

}  // namespace flashback::cli
