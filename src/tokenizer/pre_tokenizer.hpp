// Internal to src/tokenizer: the regex pre-tokenizers of byte-level BPE
// vocabularies, by llama.cpp's names (tokenizer.ggml.pre), on PCRE2 (a
// Unicode-aware engine: \p{L}, \p{N}, \s and lookahead as the originals mean
// them).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace flashback::internal {

class PreTokenizer {
 public:
  // InvalidArgument for a name flashback does not know.
  explicit PreTokenizer(const std::string& name);

  // Splits valid UTF-8 `text` into pieces that concatenate to it: each regex
  // in turn splits every piece so far into its matches and the text between
  // them (llama.cpp's unicode_regex_split, HF's Split with Isolated).
  std::vector<std::string_view> split(std::string_view text) const;

  const std::string& name() const { return name_; }

  // The regexes of a known name (empty for an unknown one), and every known name.
  static std::vector<std::string> patterns(const std::string& name);
  static const std::vector<std::string>& names();

 private:
  struct Regex;
  std::string name_;
  std::vector<std::shared_ptr<const Regex>> regexes_;
};

}  // namespace flashback::internal
