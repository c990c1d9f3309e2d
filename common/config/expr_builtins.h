// The function table of the expression language: len, lower, regex, default,
// join, range... (the list is in expr.h), callable as f(x), x.f() or x | f.
#pragma once

#include <string_view>
#include <vector>

#include "common/base/json.h"
#include "common/base/status.h"
#include "common/config/expr_tree.h"

namespace matrix::config::expr_internal {

// A value that either points into the context (no copy) or owns a result.
struct Val {
  const Json* ref = nullptr;
  Json own;
  bool undefined = false;

  const Json& get() const { return ref != nullptr ? *ref : own; }
  Json take() { return ref != nullptr ? *ref : std::move(own); }

  static Val Ref(const Json* p) {
    Val v;
    v.ref = p;
    return v;
  }
  static Val Own(Json j) {
    Val v;
    v.own = std::move(j);
    return v;
  }
  static Val Undefined() {
    Val v;
    v.undefined = true;
    return v;
  }
};

using Args = std::vector<Val>;
using FnImpl = StatusOr<Json> (*)(Args& a, const Node& call);

struct FuncDef {
  const char* name;
  int min_args;
  int max_args;  // -1: any number
  FnImpl fn;
  bool lenient_first;  // the first argument may be undefined
};

// Index of `name` in the table, or -1.
int FindFunction(std::string_view name);
// The function at an index FindFunction returned.
const FuncDef& FunctionAt(int index);

}  // namespace matrix::config::expr_internal
