// API keys for LLM endpoints come from an environment variable or an
// owner-only file, never from configuration text, and are never logged.
// Thread-safety: reads the environment; do not race it with setenv().
#pragma once

#include <string>

#include "common/base/status.h"

namespace matrix::llm {

// Returns the key, whitespace-trimmed:
//   - from the environment variable `env_name` when it is set and non-blank;
//   - otherwise from `file_path`, which must exist, be a regular file and be
//     owner-only (mode & 077 == 0), else FailedPrecondition naming the file;
//     an empty file is FailedPrecondition too.
// NotFound when the variable is unset and no file is given. Error messages
// name the variable or file, never the key.
StatusOr<std::string> ReadApiKey(const std::string& env_name, const std::string& file_path);

}  // namespace matrix::llm
