// The bench subcommands other than ralm (bench.cpp), each in its own file.
#pragma once

#include <CLI/CLI.hpp>

namespace flashback::cli {

// bench prefill, bench decode (bench_model.cpp)
void add_bench_model(CLI::App& bench);
// bench retrieve (bench_retrieve.cpp; only with retrieval)
void add_bench_retrieve(CLI::App& bench);

}  // namespace flashback::cli
