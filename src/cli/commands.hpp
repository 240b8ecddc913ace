// One function per subcommand: each adds itself to the app and runs from its
// CLI11 callback. Failures are thrown (flashback::Error and friends) and turned
// into one line + exit status 1 by main().
#pragma once

#include <CLI/CLI.hpp>

namespace flashback::cli {

// --tokenizer's help: every format Tokenizer::from_file reads.
inline constexpr const char* kKeepQuantizedHelp =
    "a GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K layer projections stay quantized in memory (CPU; adapters unmerged)";
inline constexpr const char* kTokenizerHelp =
    "tokenizer.model, tokenizer.json, tokenizer.bin or a .gguf (default: found with the model)";

void add_tokenize(CLI::App& app);
void add_generate(CLI::App& app);
void add_info(CLI::App& app);
void add_convert(CLI::App& app);
void add_index(CLI::App& app);
void add_retrieve(CLI::App& app);
void add_ralm(CLI::App& app);
void add_eval(CLI::App& app);
void add_bench(CLI::App& app);

}  // namespace flashback::cli
