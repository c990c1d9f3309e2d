// Composition of the tree before it is interpreted: a file's `defaults`
// (other files deep-merged under it, maps merged and everything else
// replaced) and the command-line overrides (syntax in pipeline_loader.h).
#pragma once

#include <string>

#include "common/config/loader/config_tree.h"

namespace matrix::config::loader_internal {

// Loads `path` and, recursively, the files its `defaults` list into *out.
// Read errors, cycles and too-deep chains are reported to `diag`.
bool ComposeFile(const std::string& path, Diag* diag, CNode* out);

// `p` relative to the folder of `file` (or to the working directory for values
// from the command line or an empty file), made absolute and normalized.
std::string ResolvePath(const std::string& p, const std::string& file);

// Applies one override ("a.b=v", "+a.b=v", "++a.b=v" or "~a.b") to the tree.
void ApplyOverride(const std::string& text, CNode* root, Diag* diag);

}  // namespace matrix::config::loader_internal
