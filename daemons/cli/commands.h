// Small `matrix` subcommands: validate and status.
#pragma once

#include <string>
#include <vector>

namespace matrix::cli {

// Prints every error as "file:line: key: message"; 0 when valid, 1 otherwise.
int ValidateCommand(const std::string& path, const std::vector<std::string>& overrides);
// Prints progress, per-role work in flight and endpoint health of a run
// directory (the one `matrix run` prints); 0 on success.
int StatusCommand(const std::string& run_dir);

}  // namespace matrix::cli
