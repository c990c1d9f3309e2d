// The parsed form of an expression: an immutable tree of Nodes, built by
// the parser (expr_parser.h) and walked by the evaluator (expr_eval.h).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/base/json.h"
#include "common/config/regex.h"

namespace matrix::config::expr_internal {

enum class NodeKind {
  kLiteral, kList, kDict, kName, kAttr, kIndex, kSlice, kUnary, kBinary, kAnd, kOr,
  kTernary, kCall, kTest,
};
enum class BinOp {
  kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn, kMatch, kNotMatch, kConcat, kAdd, kSub, kMul,
  kDiv, kFloorDiv, kMod,
};
enum class UnOp { kNeg, kPos, kNot };

// Invariants: kids hold the operands in source order (kAttr: object; kIndex:
// object, index; kSlice: object, start or null, end or null; kTernary: then,
// cond, else or null; kCall: arguments; kDict: key, value, key, value...).
struct Node {
  NodeKind kind = NodeKind::kLiteral;
  std::string src;  // source text of this subexpression, for messages
  Json value;       // kLiteral
  std::string name;  // kName/kAttr: the name; kTest: the test
  BinOp bin = BinOp::kEq;
  UnOp un = UnOp::kNot;
  int fn = -1;  // kCall: index into the function table
  bool negate = false;  // kTest: "is not"
  std::vector<std::unique_ptr<Node>> kids;
  std::optional<Regex> re;  // =~ / regex() with a literal pattern
  int depth = 1;
};

}  // namespace matrix::config::expr_internal
