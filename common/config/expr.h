// The pipeline expression language: routing conditions, extraction paths,
// `set:` assignments, reward formulas and the placeholders inside prompt
// templates. It is deliberately small and safe: no loops, no assignment, no
// access to anything but the JSON value it is evaluated over; nesting depth,
// expression size, regex patterns/inputs and built values are all bounded.
//
// Grammar, loosest binding first:
//   expr      := or_expr [ "if" or_expr [ "else" expr ] ]      (else omitted -> null)
//   or_expr   := and_expr { ("or" | "||") and_expr }
//   and_expr  := not_expr { ("and" | "&&") not_expr }
//   not_expr  := ("not" | "!") not_expr | comparison
//   comparison:= concat [ op concat ]   op: == != < <= > >= in "not in" =~ !~
//              | concat "is" ["not"] test   test: defined undefined none string
//                                           number integer float boolean list
//                                           mapping even odd
//   concat    := sum { "~" sum }                  (stringifies both sides)
//   sum       := product { ("+" | "-") product }
//   product   := unary { ("*" | "/" | "//" | "%") unary }
//   unary     := ("-" | "+") unary | postfix
//   postfix   := primary { "." name | "." name "(" args ")" | "[" expr "]"
//                          | "[" [expr] ":" [expr] "]" | "|" name ["(" args ")"] }
//   primary   := integer | float | 'string' | "string" | true | false | null
//              | [a, b, ...] | {"k": v, ...} | name | name "(" args ")" | "(" expr ")"
// `x.f(a)` and `x | f(a)` both mean f(x, a): methods and template filters are
// the function table below. True/False/None and none are accepted as aliases.
//
// Semantics:
//   - Names resolve in the Scope (template loop variables and `set`s first),
//     then as top-level keys of the context object. `a.b` reads an object key;
//     `x[i]` indexes lists and strings (negative from the end; a string index
//     gives a one-character string), `x["k"]` reads a key; `x[a:b]` slices.
//   - A path that does not resolve is *undefined*. Lenient evaluation turns it
//     into null; strict evaluation fails with "undefined 'input.foo'". The first
//     argument of default() and the operand of `is defined` are always lenient.
//   - == and != compare by value; values of different types are unequal (ints and
//     floats compare numerically). < <= > >= compare numbers numerically and
//     strings bytewise; with a null operand they are false; other mixes are errors.
//   - + adds numbers and concatenates strings or lists; * also repeats a string
//     or list; / is true division, // floor division, % modulo (Python signs).
//     Integer overflow and division by zero are errors.
//   - `a in b`: substring, list membership or object key. `s =~ p` is a regex
//     search (RE2 syntax: no back-references or lookaround; see regex.h) of p
//     in the string s; a null left side gives false.
//   - and/or short-circuit and return an operand (Python style); `not` gives a
//     bool. Truthiness: null, false, 0, "", [] and {} are false.
//
// Functions (name: arguments): len/length(x) (code points for strings; null is 0),
// lower, upper, trim/strip, capitalize, int, float, str/string, bool,
// contains(a, b), startswith(s, p), endswith(s, p), regex(s, pattern) (first
// participating capture group, else the whole match, else null), default/d(x
// [, d [, also_falsy]]), min, max (a list or several arguments), sum, abs,
// round(x [, digits]), join(list [, sep]), split(s [, sep]), replace(s, old,
// new [, count]), first, last, keys, values, items, get(obj, key [, default]),
// sort/sorted, unique, range(n | a, b [, step]), tojson(x [, indent]), fromjson(s).
//
// Thread-safety: an Expr is immutable after Parse; copies share the parsed tree
// and may be evaluated concurrently from any number of threads. A Scope belongs
// to one evaluation at a time.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/base/json.h"
#include "common/base/status.h"
#include "common/config/regex.h"

namespace matrix::config {

// Limits that keep evaluation cheap whatever the input.
inline constexpr size_t kMaxExprBytes = 16 * 1024;           // expression source text
inline constexpr int kMaxExprDepth = 100;                    // nesting of the parsed tree
inline constexpr size_t kMaxBuiltValueBytes = 16 * 1024 * 1024;  // strings/lists built by + * join...
inline constexpr int64_t kMaxRangeLength = 100000;           // range(n)

// Names visible to an expression besides the context's top-level keys. Child
// scopes shadow their parents. Lookup pointers stay valid until the next Set on
// the same scope.
class Scope {
 public:
  // The root scope: names fall through to `ctx`'s keys when `ctx` is an object.
  explicit Scope(const Json& ctx) : ctx_(&ctx) {}
  // A nested scope (a template loop body).
  explicit Scope(const Scope* parent) : parent_(parent) {}

  void Set(const std::string& name, Json value);
  // The innermost binding of `name`, else the context key, else nullptr.
  const Json* Lookup(std::string_view name) const;

 private:
  const Json* ctx_ = nullptr;
  const Scope* parent_ = nullptr;
  std::vector<std::pair<std::string, Json>> vars_;
};

enum class EvalMode {
  kLenient,  // undefined paths read as null
  kStrict,   // an undefined path is an error naming it
};

class Expr {
 public:
  // Parses `text`. On failure the message says where (1-based position) and
  // what was expected, e.g. "position 6: expected ')' but found end of input".
  // Unknown functions, wrong argument counts and invalid literal regex patterns
  // are reported here rather than at evaluation.
  static StatusOr<Expr> Parse(std::string_view text);
  // As above; on failure also stores the 0-based byte offset of the error.
  static StatusOr<Expr> Parse(std::string_view text, size_t* error_offset);

  // Lenient evaluation: a missing path is null.
  StatusOr<Json> Eval(const Json& ctx) const;
  // Strict evaluation: a missing path fails with "undefined 'input.foo'".
  StatusOr<Json> EvalStrict(const Json& ctx) const;
  // Lenient evaluation, then truthiness.
  StatusOr<bool> EvalBool(const Json& ctx) const;
  // Evaluation with extra bindings (used by templates).
  StatusOr<Json> Eval(const Scope& scope, EvalMode mode) const;

  const std::string& text() const;

 private:
  struct Impl;
  explicit Expr(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // never null
};

// null, false, 0, "", [] and {} are false; everything else is true.
bool IsTruthy(const Json& v);

// How a value prints inside text: strings as-is, null as "", booleans as
// true/false, numbers in their shortest JSON form, lists and objects as JSON.
std::string ToDisplayString(const Json& v);

// Regex::Compile: InvalidArgument names the pattern and the problem;
// patterns longer than kMaxRegexPatternBytes are rejected.
StatusOr<Regex> CompileRegex(std::string_view pattern, bool ignore_case = false);

// Searches `text` for `re`. Returns the first capture group that took part in
// the match, else the whole match; nullopt when nothing matches.
// InvalidArgument when text is longer than kMaxRegexInputBytes.
StatusOr<std::optional<std::string>> RegexExtract(const Regex& re, std::string_view text);
// Whether `re` matches anywhere in `text` (same limits).
StatusOr<bool> RegexSearch(const Regex& re, std::string_view text);

// Whether `name` is in the function/filter table.
bool IsKnownFunction(std::string_view name);

}  // namespace matrix::config
