// Expr: parsing into a shared immutable tree and evaluation over a context.
// The stages live in expr_lexer, expr_parser, expr_eval, expr_builtins and
// expr_values.
// Thread-safety: parsed trees are shared read-only; evaluation keeps all
// state on the stack of the calling thread.
#include "common/config/expr.h"

#include "common/config/expr_builtins.h"
#include "common/config/expr_eval.h"
#include "common/config/expr_parser.h"

namespace matrix::config {

using expr_internal::Node;

struct Expr::Impl {
  std::string text;
  std::unique_ptr<Node> root;
};

StatusOr<Expr> Expr::Parse(std::string_view text) {
  size_t ignored = 0;
  return Parse(text, &ignored);
}

StatusOr<Expr> Expr::Parse(std::string_view text, size_t* error_offset) {
  *error_offset = 0;
  if (text.size() > kMaxExprBytes) {
    return InvalidArgument("expression of " + std::to_string(text.size()) +
                           " bytes exceeds the limit of " + std::to_string(kMaxExprBytes));
  }
  expr_internal::SyntaxError error;
  std::unique_ptr<Node> root = expr_internal::ParseTree(text, &error);
  if (!root) {
    *error_offset = error.offset;
    return InvalidArgument(error.message);
  }
  auto impl = std::make_shared<Impl>();
  impl->text = std::string(text);
  impl->root = std::move(root);
  return Expr(std::move(impl));
}

StatusOr<Json> Expr::Eval(const Scope& scope, EvalMode mode) const {
  auto v = expr_internal::Evaluate(*impl_->root, scope, mode == EvalMode::kStrict);
  if (!v.ok()) return v.status();
  return v->take();
}

StatusOr<Json> Expr::Eval(const Json& ctx) const { return Eval(Scope(ctx), EvalMode::kLenient); }

StatusOr<Json> Expr::EvalStrict(const Json& ctx) const { return Eval(Scope(ctx), EvalMode::kStrict); }

StatusOr<bool> Expr::EvalBool(const Json& ctx) const {
  auto v = expr_internal::Evaluate(*impl_->root, Scope(ctx), false);
  if (!v.ok()) return v.status();
  return IsTruthy(v->get());
}

const std::string& Expr::text() const { return impl_->text; }

bool IsKnownFunction(std::string_view name) { return expr_internal::FindFunction(name) >= 0; }

}  // namespace matrix::config