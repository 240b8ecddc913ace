// flashback command-line tool: dispatches to the subcommands in this folder.
#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>
#include <string>

#include "commands.hpp"
#include "flashback/error.hpp"

namespace {

// First line only: the CLI contract is one clear line per error.
std::string first_line(const std::string& s) {
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

int fail(const std::string& msg) {
  std::fflush(stdout);
  std::fprintf(stderr, "flashback: error: %s\n", first_line(msg).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"flashback: FlashBack retrieval-augmented Llama-2 inference"};
  app.require_subcommand(1);
  flashback::cli::add_generate(app);
  flashback::cli::add_tokenize(app);
  flashback::cli::add_info(app);
  flashback::cli::add_convert(app);
#if FLASHBACK_WITH_RETRIEVAL  // the commands that need an index (Xapian, Eigen); bench ralm needs none
  flashback::cli::add_index(app);
  flashback::cli::add_retrieve(app);
  flashback::cli::add_ralm(app);
  flashback::cli::add_eval(app);
#endif
  flashback::cli::add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const flashback::Error& e) {
    return fail(e.what());
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return 0;
}
