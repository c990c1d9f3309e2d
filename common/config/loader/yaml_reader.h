// YAML text into a CNode tree with yaml-cpp, the only user of yaml-cpp:
// plain scalars typed by the YAML 1.2 core schema, merge keys ('<<')
// applied, duplicate keys, cyclic aliases and oversized trees refused.
#pragma once

#include <string>

#include "common/config/loader/config_tree.h"

namespace matrix::config::loader_internal {

// Parses YAML text into a tree. `file`/`line` locate errors; for command-line
// values (file kCommandLine), lines are 0. `key` prefixes the keys in errors.
// yaml-cpp exceptions are caught and reported here.
bool ParseYaml(const std::string& text, const std::string& file, const std::string& key, Diag* diag,
               CNode* out);

}  // namespace matrix::config::loader_internal
