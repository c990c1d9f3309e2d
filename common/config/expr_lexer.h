// The lexer: expression text into tokens (numbers, strings with their
// escapes decoded, names and operators), each with its byte span.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/json.h"

namespace matrix::config::expr_internal {

struct Token {
  enum Kind { kEnd, kInt, kFloat, kString, kIdent, kOp } kind = kEnd;
  std::string text;  // identifier, operator, or decoded string
  Json value;        // numbers
  size_t pos = 0;
  size_t end = 0;
};

// The first syntax error of a parse.
struct SyntaxError {
  size_t offset = 0;    // 0-based byte offset
  std::string message;  // "position <offset + 1>: ..."

  // Records the error unless one is already recorded; returns false.
  bool Set(size_t pos, std::string msg);
};

// Splits `text` into tokens ending with a kEnd token. On failure returns
// false with *error set.
bool Lex(std::string_view text, std::vector<Token>* tokens, SyntaxError* error);

}  // namespace matrix::config::expr_internal
