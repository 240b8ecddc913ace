#include "commands.hpp"
namespace flashback::cli {
void add_retrieve(CLI::App& app) { (void)app; }
}  // namespace flashback::cli
