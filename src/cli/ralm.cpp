#include "commands.hpp"
namespace flashback::cli {
void add_ralm(CLI::App& app) { (void)app; }
}  // namespace flashback::cli
