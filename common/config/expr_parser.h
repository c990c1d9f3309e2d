// The recursive-descent parser: tokens into an immutable tree. Unknown
// functions, wrong argument counts and invalid literal regex patterns are
// syntax errors.
#pragma once

#include <memory>
#include <string_view>

#include "common/config/expr_lexer.h"
#include "common/config/expr_tree.h"

namespace matrix::config::expr_internal {

// The tree of `text`, or nullptr with *error set.
std::unique_ptr<Node> ParseTree(std::string_view text, SyntaxError* error);

}  // namespace matrix::config::expr_internal
