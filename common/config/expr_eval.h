// The evaluator: walks a parsed tree over a Scope, reading the context by
// reference and copying only what it builds.
#pragma once

#include "common/base/status.h"
#include "common/config/expr.h"
#include "common/config/expr_builtins.h"
#include "common/config/expr_tree.h"

namespace matrix::config::expr_internal {

// Evaluates `root`; strict: an undefined path is an error naming it,
// otherwise it is an undefined Val.
StatusOr<Val> Evaluate(const Node& root, const Scope& scope, bool strict);

}  // namespace matrix::config::expr_internal
