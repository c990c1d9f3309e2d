// Tree-walking evaluation of expressions, and name lookup in Scopes.
// Thread-safety: all state lives on the stack of the calling thread.
#include "common/config/expr_eval.h"

#include <algorithm>
#include <climits>

#include "common/config/expr_values.h"

namespace matrix::config {

void Scope::Set(const std::string& name, Json value) {
  for (auto& [k, v] : vars_) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  vars_.emplace_back(name, std::move(value));
}

const Json* Scope::Lookup(std::string_view name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent_) {
    for (auto it = s->vars_.rbegin(); it != s->vars_.rend(); ++it) {
      if (it->first == name) return &it->second;
    }
    if (s->ctx_ != nullptr && s->ctx_->is_object()) {
      auto it = s->ctx_->find(name);
      if (it != s->ctx_->end()) return &*it;
    }
  }
  return nullptr;
}

namespace expr_internal {
namespace {

// The element `child` of `base` as a value: a reference when base is one,
// otherwise a copy (base's storage dies with it).
Val ChildOf(const Val& base, const Json* child) {
  if (base.ref != nullptr) return Val::Ref(child);
  return Val::Own(*child);
}

class Evaluator {
 public:
  explicit Evaluator(const Scope& scope) : scope_(scope) {}

  StatusOr<Val> Eval(const Node& n, bool strict) {
    switch (n.kind) {
      case NodeKind::kLiteral: return Val::Ref(&n.value);
      case NodeKind::kList: {
        Json out = Json::array();
        for (const auto& k : n.kids) {
          MATRIX_ASSIGN_OR_RETURN(Val v, Eval(*k, strict));
          out.push_back(v.take());
        }
        return Val::Own(std::move(out));
      }
      case NodeKind::kDict: {
        Json out = Json::object();
        for (size_t i = 0; i + 1 < n.kids.size(); i += 2) {
          MATRIX_ASSIGN_OR_RETURN(Val k, Eval(*n.kids[i], strict));
          if (!k.get().is_string()) {
            return InvalidArgument(std::string("object keys must be strings, got ") + TypeName(k.get()));
          }
          MATRIX_ASSIGN_OR_RETURN(Val v, Eval(*n.kids[i + 1], strict));
          out[k.get().get<std::string>()] = v.take();
        }
        return Val::Own(std::move(out));
      }
      case NodeKind::kName: {
        const Json* p = scope_.Lookup(n.name);
        if (p == nullptr) return Missing(n, strict);
        return Val::Ref(p);
      }
      case NodeKind::kAttr: {
        MATRIX_ASSIGN_OR_RETURN(Val base, Eval(*n.kids[0], strict));
        const Json& b = base.get();
        if (b.is_object()) {
          auto it = b.find(n.name);
          if (it != b.end()) return ChildOf(base, &*it);
        }
        return Missing(n, strict);
      }
      case NodeKind::kIndex: return EvalIndex(n, strict);
      case NodeKind::kSlice: return EvalSlice(n, strict);
      case NodeKind::kUnary: {
        MATRIX_ASSIGN_OR_RETURN(Val v, Eval(*n.kids[0], strict));
        const Json& x = v.get();
        if (n.un == UnOp::kNot) return Val::Own(!IsTruthy(x));
        if (!x.is_number()) {
          return InvalidArgument(std::string("unary '") + (n.un == UnOp::kNeg ? "-" : "+") +
                                 "' needs a number, got " + TypeName(x));
        }
        if (n.un == UnOp::kPos) return Val::Own(x);
        int64_t i;
        if (AsInt(x, &i)) {
          if (i == INT64_MIN) return InvalidArgument("integer overflow in '-'");
          return Val::Own(-i);
        }
        return Val::Own(-AsDouble(x));
      }
      case NodeKind::kAnd:
      case NodeKind::kOr: {
        MATRIX_ASSIGN_OR_RETURN(Val l, Eval(*n.kids[0], strict));
        bool t = IsTruthy(l.get());
        if (n.kind == NodeKind::kAnd ? !t : t) return l;
        return Eval(*n.kids[1], strict);
      }
      case NodeKind::kTernary: {
        MATRIX_ASSIGN_OR_RETURN(Val c, Eval(*n.kids[1], strict));
        if (IsTruthy(c.get())) return Eval(*n.kids[0], strict);
        if (n.kids[2]) return Eval(*n.kids[2], strict);
        return Val::Own(Json());
      }
      case NodeKind::kBinary: return EvalBinary(n, strict);
      case NodeKind::kCall: {
        const FuncDef& f = FunctionAt(n.fn);
        Args args;
        args.reserve(n.kids.size());
        for (size_t i = 0; i < n.kids.size(); ++i) {
          MATRIX_ASSIGN_OR_RETURN(Val v, Eval(*n.kids[i], strict && !(i == 0 && f.lenient_first)));
          args.push_back(std::move(v));
        }
        auto r = f.fn(args, n);
        if (!r.ok()) return r.status();
        return Val::Own(std::move(r).value());
      }
      case NodeKind::kTest: return EvalTest(n, strict);
    }
    return Internal("bad expression node");
  }

 private:
  static StatusOr<Val> Missing(const Node& n, bool strict) {
    if (strict) return InvalidArgument("undefined '" + n.src + "'");
    return Val::Undefined();
  }

  StatusOr<Val> EvalIndex(const Node& n, bool strict) {
    MATRIX_ASSIGN_OR_RETURN(Val base, Eval(*n.kids[0], strict));
    MATRIX_ASSIGN_OR_RETURN(Val idx, Eval(*n.kids[1], strict));
    const Json& b = base.get();
    const Json& k = idx.get();
    if (b.is_object()) {
      if (!k.is_string()) {
        return InvalidArgument(std::string("an object is indexed by a string, got ") + TypeName(k));
      }
      auto it = b.find(k.get_ref<const std::string&>());
      if (it == b.end()) return Missing(n, strict);
      return ChildOf(base, &*it);
    }
    if (b.is_array() || b.is_string()) {
      int64_t i;
      if (!AsInt(k, &i)) {
        return InvalidArgument(std::string("a ") + TypeName(b) + " is indexed by an integer, got " +
                               TypeName(k));
      }
      if (b.is_array()) {
        int64_t sz = static_cast<int64_t>(b.size());
        if (i < 0) i += sz;
        if (i < 0 || i >= sz) return Missing(n, strict);
        return ChildOf(base, &b[static_cast<size_t>(i)]);
      }
      const std::string& s = b.get_ref<const std::string&>();
      if (IsAscii(s)) {
        int64_t sz = static_cast<int64_t>(s.size());
        if (i < 0) i += sz;
        if (i < 0 || i >= sz) return Missing(n, strict);
        return Val::Own(Json(std::string(1, s[static_cast<size_t>(i)])));
      }
      auto offs = CodePointOffsets(s);
      int64_t sz = static_cast<int64_t>(offs.size()) - 1;
      if (i < 0) i += sz;
      if (i < 0 || i >= sz) return Missing(n, strict);
      size_t at = static_cast<size_t>(i);
      return Val::Own(Json(s.substr(offs[at], offs[at + 1] - offs[at])));
    }
    if (b.is_null()) return Missing(n, strict);
    return InvalidArgument(std::string("cannot index a ") + TypeName(b));
  }

  StatusOr<Val> EvalSlice(const Node& n, bool strict) {
    MATRIX_ASSIGN_OR_RETURN(Val base, Eval(*n.kids[0], strict));
    int64_t bounds[2] = {0, 0};
    bool given[2] = {false, false};
    for (int j = 0; j < 2; ++j) {
      if (!n.kids[j + 1]) continue;
      MATRIX_ASSIGN_OR_RETURN(Val v, Eval(*n.kids[j + 1], strict));
      if (v.get().is_null()) continue;
      if (!AsInt(v.get(), &bounds[j])) return InvalidArgument("slice bounds must be integers");
      given[j] = true;
    }
    const Json& b = base.get();
    if (b.is_null()) return Missing(n, strict);
    std::vector<size_t> offs;
    int64_t sz;
    if (b.is_array()) {
      sz = static_cast<int64_t>(b.size());
    } else if (b.is_string()) {
      offs = CodePointOffsets(b.get_ref<const std::string&>());
      sz = static_cast<int64_t>(offs.size()) - 1;
    } else {
      return InvalidArgument(std::string("cannot slice a ") + TypeName(b));
    }
    auto clamp = [sz](int64_t v) {
      if (v < 0) v += sz;
      return std::max<int64_t>(0, std::min<int64_t>(v, sz));
    };
    int64_t lo = given[0] ? clamp(bounds[0]) : 0;
    int64_t hi = given[1] ? clamp(bounds[1]) : sz;
    if (hi < lo) hi = lo;
    if (b.is_array()) {
      Json out = Json::array();
      for (int64_t i = lo; i < hi; ++i) out.push_back(b[static_cast<size_t>(i)]);
      return Val::Own(std::move(out));
    }
    const std::string& s = b.get_ref<const std::string&>();
    return Val::Own(Json(s.substr(offs[lo], offs[hi] - offs[lo])));
  }

  StatusOr<Val> EvalBinary(const Node& n, bool strict) {
    MATRIX_ASSIGN_OR_RETURN(Val lv, Eval(*n.kids[0], strict));
    MATRIX_ASSIGN_OR_RETURN(Val rv, Eval(*n.kids[1], strict));
    const Json& l = lv.get();
    const Json& r = rv.get();
    switch (n.bin) {
      case BinOp::kEq: return Val::Own(ValuesEqual(l, r));
      case BinOp::kNe: return Val::Own(!ValuesEqual(l, r));
      case BinOp::kLt:
      case BinOp::kLe:
      case BinOp::kGt:
      case BinOp::kGe: {
        if (l.is_null() || r.is_null()) return Val::Own(false);
        int cmp = 0;
        if (!Order(l, r, &cmp)) {
          return InvalidArgument(std::string("'") + OpText(n.bin) + "' cannot compare " +
                                 TypeName(l) + " with " + TypeName(r));
        }
        bool res = n.bin == BinOp::kLt ? cmp < 0
                   : n.bin == BinOp::kLe ? cmp <= 0
                   : n.bin == BinOp::kGt ? cmp > 0
                                         : cmp >= 0;
        return Val::Own(res);
      }
      case BinOp::kIn:
      case BinOp::kNotIn: {
        MATRIX_ASSIGN_OR_RETURN(bool in, Contains(r, l));
        return Val::Own(n.bin == BinOp::kIn ? in : !in);
      }
      case BinOp::kMatch:
      case BinOp::kNotMatch: {
        bool found = false;
        if (!l.is_null()) {
          if (!l.is_string()) {
            return InvalidArgument(std::string("'=~' needs a string on the left, got ") + TypeName(l));
          }
          std::optional<Regex> compiled;
          const Regex* re = n.re ? &*n.re : nullptr;
          if (re == nullptr) {
            if (!r.is_string()) return InvalidArgument("'=~' needs a string pattern on the right");
            MATRIX_ASSIGN_OR_RETURN(compiled, CompileRegex(r.get_ref<const std::string&>()));
            re = &*compiled;
          }
          MATRIX_ASSIGN_OR_RETURN(found, RegexSearch(*re, l.get_ref<const std::string&>()));
        }
        return Val::Own(n.bin == BinOp::kMatch ? found : !found);
      }
      case BinOp::kConcat: {
        std::string s = ToDisplayString(l) + ToDisplayString(r);
        MATRIX_RETURN_IF_ERROR(CheckSize(s.size()));
        return Val::Own(Json(std::move(s)));
      }
      default: {
        auto res = Arith(n.bin, l, r);
        if (!res.ok()) return res.status();
        return Val::Own(std::move(res).value());
      }
    }
  }

  StatusOr<Val> EvalTest(const Node& n, bool strict) {
    bool lenient = n.name == "defined" || n.name == "undefined";
    MATRIX_ASSIGN_OR_RETURN(Val v, Eval(*n.kids[0], strict && !lenient));
    const Json& x = v.get();
    bool r = false;
    int64_t i;
    if (n.name == "defined") {
      r = !v.undefined;
    } else if (n.name == "undefined") {
      r = v.undefined;
    } else if (n.name == "none") {
      r = x.is_null();
    } else if (n.name == "string") {
      r = x.is_string();
    } else if (n.name == "number") {
      r = x.is_number();
    } else if (n.name == "integer") {
      r = x.is_number_integer();
    } else if (n.name == "float") {
      r = x.is_number_float();
    } else if (n.name == "boolean") {
      r = x.is_boolean();
    } else if (n.name == "list") {
      r = x.is_array();
    } else if (n.name == "mapping") {
      r = x.is_object();
    } else if (n.name == "even" || n.name == "odd") {
      if (!AsInt(x, &i)) return InvalidArgument("'is " + n.name + "' needs an integer");
      r = (i % 2 == 0) == (n.name == "even");
    }
    return Val::Own(n.negate ? !r : r);
  }

  const Scope& scope_;
};

}  // namespace

StatusOr<Val> Evaluate(const Node& root, const Scope& scope, bool strict) {
  Evaluator ev(scope);
  return ev.Eval(root, strict);
}

}  // namespace expr_internal
}  // namespace matrix::config
