// The flags of GenerateOptions, shared by `flashback generate` and `flashback ralm`.
#pragma once

#include <CLI/CLI.hpp>

#include "flashback/generate.hpp"

namespace flashback::cli {

inline void add_generation_flags(CLI::App* cmd, GenerateOptions& g) {
  cmd->add_option("-n,--max-new-tokens", g.max_new_tokens, "number of tokens to generate")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--temperature", g.sampling.temperature, "0 = greedy")->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--top-k", g.sampling.top_k, "keep the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", g.sampling.top_p, "nucleus sampling mass in (0, 1]")->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("--seed", g.sampling.seed, "sampling seed");
  cmd->add_flag("--stop-at-eos,!--no-stop-at-eos", g.stop_at_eos, "stop after the model's end-of-sequence token [on]");
}

}  // namespace flashback::cli
