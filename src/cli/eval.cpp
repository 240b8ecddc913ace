#include "commands.hpp"
namespace flashback::cli {
void add_eval(CLI::App& app) { (void)app; }
}  // namespace flashback::cli
