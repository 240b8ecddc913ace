// The one way the CLI shows generated text: the prompt as given, then each
// token's text as it is chosen, then whatever the decoder still held at the
// end (a byte sequence cut short). With `print` off it only collects the text
// (for --json).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "flashback/tokenizer.hpp"

namespace flashback::cli {

class TokenPrinter {
 public:
  TokenPrinter(const Tokenizer& tok, const std::string& prompt, const std::vector<int32_t>& prompt_ids, bool print)
      : stream_(tok), print_(print) {
    stream_.skip(prompt_ids);  // the prompt is shown as given, the rest decodes as its continuation
    if (print_) write(prompt);
  }

  // The on_token callback of the generation loop.
  bool operator()(int64_t id) {
    std::string piece = stream_.put(static_cast<int32_t>(id));
    text_ += piece;
    if (print_) write(piece);
    return true;
  }

  // Flushes the decoder (printing the tail) and ends the line; returns the generated text.
  const std::string& finish() {
    std::string tail = stream_.flush();
    text_ += tail;
    if (print_) {
      write(tail);
      write("\n");
    }
    return text_;
  }

 private:
  static void write(const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  }

  DecodeStream stream_;
  std::string text_;
  bool print_;
};

}  // namespace flashback::cli
