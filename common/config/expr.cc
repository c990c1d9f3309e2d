// Expression language: lexer, recursive-descent parser into an immutable
// tree, and a tree-walking evaluator that reads the context by reference.
// Thread-safety: parsed trees are shared read-only; evaluation keeps all
// state on the stack of the calling thread.
#include "common/config/expr.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <set>

namespace matrix::config {

// ---------------------------------------------------------------------------
// Scope

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

// ---------------------------------------------------------------------------
// Value utilities

namespace {

const char* TypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "integer";
    case Json::value_t::number_float: return "float";
    case Json::value_t::string: return "string";
    case Json::value_t::array: return "list";
    case Json::value_t::object: return "object";
    default: return "value";
  }
}

// Integers that fit int64; unsigned values above INT64_MAX count as floats.
bool AsInt(const Json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return true;
  }
  return false;
}

double AsDouble(const Json& v) { return v.get<double>(); }

bool IsAscii(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

size_t CodePointCount(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

// Byte offsets of each code point start, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s) {
  std::vector<size_t> offs;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) offs.push_back(i);
  }
  offs.push_back(s.size());
  return offs;
}

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Quote(std::string_view s) {
  std::string out = "'";
  out.append(s.substr(0, 60));
  if (s.size() > 60) out += "...";
  out += "'";
  return out;
}

// Numbers by value, strings bytewise. Sets *cmp to -1/0/1; false when the
// pair is not ordered (mixed or unordered types).
bool Order(const Json& a, const Json& b, int* cmp) {
  if (a.is_number() && b.is_number()) {
    int64_t x, y;
    if (AsInt(a, &x) && AsInt(b, &y)) {
      *cmp = x < y ? -1 : (x > y ? 1 : 0);
    } else {
      double dx = AsDouble(a), dy = AsDouble(b);
      *cmp = dx < dy ? -1 : (dx > dy ? 1 : 0);
    }
    return true;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.get_ref<const std::string&>().compare(b.get_ref<const std::string&>());
    *cmp = c < 0 ? -1 : (c > 0 ? 1 : 0);
    return true;
  }
  return false;
}

bool ValuesEqual(const Json& a, const Json& b) {
  if (a.is_number() && b.is_number()) {
    int cmp = 0;
    Order(a, b, &cmp);
    return cmp == 0;
  }
  if (a.type() != b.type()) return false;
  return a == b;
}

Status CheckSize(size_t n) {
  if (n > kMaxBuiltValueBytes) {
    return ResourceExhausted("value of " + std::to_string(n) + " bytes exceeds the limit of " +
                             std::to_string(kMaxBuiltValueBytes));
  }
  return Status::Ok();
}

// Scalars as text; lists and objects are rejected for string functions.
StatusOr<std::string> StringArg(const Json& v, const char* fn) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array() || v.is_object()) {
    return InvalidArgument(std::string(fn) + "() expects a string, got " + TypeName(v));
  }
  return ToDisplayString(v);
}

StatusOr<bool> Contains(const Json& container, const Json& item) {
  if (container.is_null()) return false;
  if (container.is_string()) {
    if (!item.is_string()) {
      return InvalidArgument(std::string("'in' needs a string on the left when the right side is a "
                                         "string, got ") + TypeName(item));
    }
    return container.get_ref<const std::string&>().find(item.get_ref<const std::string&>()) !=
           std::string::npos;
  }
  if (container.is_array()) {
    for (const auto& e : container) {
      if (ValuesEqual(e, item)) return true;
    }
    return false;
  }
  if (container.is_object()) {
    if (!item.is_string()) return false;
    return container.contains(item.get_ref<const std::string&>());
  }
  return InvalidArgument(std::string("'in' cannot search a ") + TypeName(container));
}

}  // namespace

bool IsTruthy(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return false;
    case Json::value_t::boolean: return v.get<bool>();
    case Json::value_t::number_integer: return v.get<int64_t>() != 0;
    case Json::value_t::number_unsigned: return v.get<uint64_t>() != 0;
    case Json::value_t::number_float: return v.get<double>() != 0.0;
    case Json::value_t::string: return !v.get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object: return !v.empty();
    default: return true;
  }
}

std::string ToDisplayString(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "";
    case Json::value_t::string: return v.get<std::string>();
    case Json::value_t::boolean: return v.get<bool>() ? "true" : "false";
    default: return DumpJson(v);
  }
}

StatusOr<Regex> CompileRegex(std::string_view pattern, bool ignore_case) {
  return Regex::Compile(pattern, ignore_case);
}

namespace {

Status CheckRegexInput(std::string_view text) {
  if (text.size() > kMaxRegexInputBytes) {
    return InvalidArgument("regex input of " + std::to_string(text.size()) +
                           " bytes exceeds the limit of " + std::to_string(kMaxRegexInputBytes));
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::optional<std::string>> RegexExtract(const Regex& re, std::string_view text) {
  MATRIX_RETURN_IF_ERROR(CheckRegexInput(text));
  std::optional<Regex::Match> m = re.Find(text);
  if (!m) return std::optional<std::string>();
  return std::optional<std::string>(std::string(m->FirstGroupOrWhole()));
}

StatusOr<bool> RegexSearch(const Regex& re, std::string_view text) {
  MATRIX_RETURN_IF_ERROR(CheckRegexInput(text));
  return re.Search(text);
}

// ---------------------------------------------------------------------------
// Tree

namespace expr_detail {

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

}  // namespace expr_detail

using expr_detail::BinOp;
using expr_detail::Node;
using expr_detail::NodeKind;
using expr_detail::UnOp;

struct Expr::Impl {
  std::string text;
  std::unique_ptr<Node> root;
};

// ---------------------------------------------------------------------------
// Evaluation values

namespace {

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

// The element `child` of `base` as a value: a reference when base is one,
// otherwise a copy (base's storage dies with it).
Val ChildOf(const Val& base, const Json* child) {
  if (base.ref != nullptr) return Val::Ref(child);
  return Val::Own(*child);
}

// ---------------------------------------------------------------------------
// Functions

using Args = std::vector<Val>;
using FnImpl = StatusOr<Json> (*)(Args& a, const Node& call);

struct FuncDef {
  const char* name;
  int min_args;
  int max_args;  // -1: any number
  FnImpl fn;
  bool lenient_first;  // the first argument may be undefined
};

StatusOr<Json> FnLen(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (v.is_string()) return Json(static_cast<int64_t>(CodePointCount(v.get_ref<const std::string&>())));
  if (v.is_array() || v.is_object()) return Json(static_cast<int64_t>(v.size()));
  if (v.is_null()) return Json(0);
  return InvalidArgument(std::string("len() of a ") + TypeName(v));
}

template <int (*F)(int)>
StatusOr<Json> MapChars(Args& a, const char* fn) {
  MATRIX_ASSIGN_OR_RETURN(std::string s, StringArg(a[0].get(), fn));
  for (char& c : s) c = static_cast<char>(F(static_cast<unsigned char>(c)));
  return Json(std::move(s));
}
StatusOr<Json> FnLower(Args& a, const Node&) { return MapChars<std::tolower>(a, "lower"); }
StatusOr<Json> FnUpper(Args& a, const Node&) { return MapChars<std::toupper>(a, "upper"); }

StatusOr<Json> FnCapitalize(Args& a, const Node&) {
  MATRIX_ASSIGN_OR_RETURN(std::string s, StringArg(a[0].get(), "capitalize"));
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return Json(std::move(s));
}

std::string_view TrimView(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

StatusOr<Json> FnTrim(Args& a, const Node&) {
  MATRIX_ASSIGN_OR_RETURN(std::string s, StringArg(a[0].get(), "trim"));
  return Json(std::string(TrimView(s)));
}

StatusOr<Json> FnInt(Args& a, const Node&) {
  const Json& v = a[0].get();
  int64_t i;
  if (AsInt(v, &i)) return Json(i);
  if (v.is_boolean()) return Json(v.get<bool>() ? 1 : 0);
  double d = 0;
  bool have_double = false;
  if (v.is_number_float() || v.is_number_unsigned()) {
    d = AsDouble(v);
    have_double = true;
  } else if (v.is_string()) {
    std::string s(TrimView(v.get_ref<const std::string&>()));
    if (!s.empty()) {
      errno = 0;
      char* end = nullptr;
      long long ll = std::strtoll(s.c_str(), &end, 10);
      if (errno == 0 && end == s.c_str() + s.size()) return Json(static_cast<int64_t>(ll));
      errno = 0;
      d = std::strtod(s.c_str(), &end);
      have_double = errno == 0 && end == s.c_str() + s.size();
    }
    if (!have_double) return InvalidArgument("int(): cannot convert " + Quote(s) + " to an integer");
  }
  if (!have_double) return InvalidArgument(std::string("int(): cannot convert a ") + TypeName(v));
  if (!std::isfinite(d) || d >= 9.2e18 || d <= -9.2e18) {
    return InvalidArgument("int(): value out of range");
  }
  return Json(static_cast<int64_t>(std::trunc(d)));
}

StatusOr<Json> FnFloat(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (v.is_number()) return Json(AsDouble(v));
  if (v.is_boolean()) return Json(v.get<bool>() ? 1.0 : 0.0);
  if (v.is_string()) {
    std::string s(TrimView(v.get_ref<const std::string&>()));
    errno = 0;
    char* end = nullptr;
    double d = s.empty() ? 0 : std::strtod(s.c_str(), &end);
    if (!s.empty() && errno == 0 && end == s.c_str() + s.size()) return Json(d);
    return InvalidArgument("float(): cannot convert " + Quote(s) + " to a number");
  }
  return InvalidArgument(std::string("float(): cannot convert a ") + TypeName(v));
}

StatusOr<Json> FnStr(Args& a, const Node&) { return Json(ToDisplayString(a[0].get())); }
StatusOr<Json> FnBool(Args& a, const Node&) { return Json(IsTruthy(a[0].get())); }

StatusOr<Json> FnContains(Args& a, const Node&) {
  MATRIX_ASSIGN_OR_RETURN(bool r, Contains(a[0].get(), a[1].get()));
  return Json(r);
}

StatusOr<Json> Affix(Args& a, bool prefix, const char* fn) {
  const Json& s = a[0].get();
  const Json& p = a[1].get();
  if (s.is_null()) return Json(false);
  if (!s.is_string() || !p.is_string()) {
    return InvalidArgument(std::string(fn) + "() expects strings, got " + TypeName(s) + " and " +
                           TypeName(p));
  }
  const std::string& str = s.get_ref<const std::string&>();
  const std::string& pre = p.get_ref<const std::string&>();
  if (pre.size() > str.size()) return Json(false);
  return Json(prefix ? str.compare(0, pre.size(), pre) == 0
                     : str.compare(str.size() - pre.size(), pre.size(), pre) == 0);
}
StatusOr<Json> FnStartsWith(Args& a, const Node&) { return Affix(a, true, "startswith"); }
StatusOr<Json> FnEndsWith(Args& a, const Node&) { return Affix(a, false, "endswith"); }

StatusOr<Json> FnRegex(Args& a, const Node& call) {
  const Json& s = a[0].get();
  if (s.is_null()) return Json();
  if (!s.is_string()) return InvalidArgument(std::string("regex() expects a string, got ") + TypeName(s));
  std::optional<Regex> compiled;
  const Regex* re = call.re ? &*call.re : nullptr;
  if (re == nullptr) {
    const Json& p = a[1].get();
    if (!p.is_string()) return InvalidArgument("regex() pattern must be a string");
    MATRIX_ASSIGN_OR_RETURN(compiled, CompileRegex(p.get_ref<const std::string&>()));
    re = &*compiled;
  }
  MATRIX_ASSIGN_OR_RETURN(auto m, RegexExtract(*re, s.get_ref<const std::string&>()));
  if (!m) return Json();
  return Json(std::move(*m));
}

StatusOr<Json> FnDefault(Args& a, const Node&) {
  bool also_falsy = a.size() > 2 && IsTruthy(a[2].get());
  const Val& v = a[0];
  bool missing = v.undefined || v.get().is_null() || (also_falsy && !IsTruthy(v.get()));
  if (!missing) return a[0].take();
  if (a.size() > 1) return a[1].take();
  return Json("");
}

StatusOr<Json> MinMax(Args& a, bool want_max, const char* fn) {
  std::vector<const Json*> items;
  if (a.size() == 1) {
    const Json& v = a[0].get();
    if (!v.is_array()) return InvalidArgument(std::string(fn) + "() of one argument needs a list");
    for (const auto& e : v) items.push_back(&e);
  } else {
    for (const auto& v : a) items.push_back(&v.get());
  }
  if (items.empty()) return InvalidArgument(std::string(fn) + "() of an empty list");
  const Json* best = items[0];
  for (size_t i = 1; i < items.size(); ++i) {
    int cmp = 0;
    if (!Order(*items[i], *best, &cmp)) {
      return InvalidArgument(std::string(fn) + "() cannot compare " + TypeName(*items[i]) +
                             " with " + TypeName(*best));
    }
    if (want_max ? cmp > 0 : cmp < 0) best = items[i];
  }
  return *best;
}
StatusOr<Json> FnMin(Args& a, const Node&) { return MinMax(a, false, "min"); }
StatusOr<Json> FnMax(Args& a, const Node&) { return MinMax(a, true, "max"); }

StatusOr<Json> Arith(BinOp op, const Json& l, const Json& r);

StatusOr<Json> FnSum(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (!v.is_array()) return InvalidArgument(std::string("sum() expects a list, got ") + TypeName(v));
  Json total = a.size() > 1 ? a[1].get() : Json(0);
  for (const auto& e : v) {
    MATRIX_ASSIGN_OR_RETURN(total, Arith(BinOp::kAdd, total, e));
  }
  return total;
}

StatusOr<Json> FnAbs(Args& a, const Node&) {
  const Json& v = a[0].get();
  int64_t i;
  if (AsInt(v, &i)) {
    if (i == INT64_MIN) return InvalidArgument("abs(): integer overflow");
    return Json(i < 0 ? -i : i);
  }
  if (v.is_number()) return Json(std::fabs(AsDouble(v)));
  return InvalidArgument(std::string("abs() of a ") + TypeName(v));
}

StatusOr<Json> FnRound(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (!v.is_number()) return InvalidArgument(std::string("round() of a ") + TypeName(v));
  int64_t i;
  if (a.size() == 1) {
    if (AsInt(v, &i)) return Json(i);
    double r = std::round(AsDouble(v));
    if (!std::isfinite(r) || std::fabs(r) >= 9.2e18) return InvalidArgument("round(): out of range");
    return Json(static_cast<int64_t>(r));
  }
  if (!AsInt(a[1].get(), &i) || i < 0 || i > 15) {
    return InvalidArgument("round(): digits must be an integer between 0 and 15");
  }
  double scale = std::pow(10.0, static_cast<double>(i));
  return Json(std::round(AsDouble(v) * scale) / scale);
}

StatusOr<Json> FnJoin(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (!v.is_array()) return InvalidArgument(std::string("join() expects a list, got ") + TypeName(v));
  std::string sep;
  if (a.size() > 1) {
    MATRIX_ASSIGN_OR_RETURN(sep, StringArg(a[1].get(), "join"));
  }
  std::string out;
  bool first = true;
  for (const auto& e : v) {
    if (!first) out += sep;
    first = false;
    out += ToDisplayString(e);
    MATRIX_RETURN_IF_ERROR(CheckSize(out.size()));
  }
  return Json(std::move(out));
}

StatusOr<Json> FnSplit(Args& a, const Node&) {
  MATRIX_ASSIGN_OR_RETURN(std::string s, StringArg(a[0].get(), "split"));
  Json out = Json::array();
  if (a.size() < 2 || a[1].get().is_null()) {
    size_t i = 0;
    while (i < s.size()) {
      while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      size_t b = i;
      while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      if (i > b) out.push_back(s.substr(b, i - b));
    }
    return out;
  }
  MATRIX_ASSIGN_OR_RETURN(std::string sep, StringArg(a[1].get(), "split"));
  if (sep.empty()) return InvalidArgument("split(): empty separator");
  size_t b = 0;
  while (true) {
    size_t p = s.find(sep, b);
    if (p == std::string::npos) {
      out.push_back(s.substr(b));
      break;
    }
    out.push_back(s.substr(b, p - b));
    b = p + sep.size();
  }
  return out;
}

StatusOr<Json> FnReplace(Args& a, const Node&) {
  MATRIX_ASSIGN_OR_RETURN(std::string s, StringArg(a[0].get(), "replace"));
  MATRIX_ASSIGN_OR_RETURN(std::string from, StringArg(a[1].get(), "replace"));
  MATRIX_ASSIGN_OR_RETURN(std::string to, StringArg(a[2].get(), "replace"));
  if (from.empty()) return InvalidArgument("replace(): empty search string");
  int64_t limit = -1;
  if (a.size() > 3 && !AsInt(a[3].get(), &limit)) {
    return InvalidArgument("replace(): count must be an integer");
  }
  std::string out;
  size_t b = 0;
  int64_t n = 0;
  while (limit < 0 || n < limit) {
    size_t p = s.find(from, b);
    if (p == std::string::npos) break;
    out.append(s, b, p - b);
    out += to;
    b = p + from.size();
    ++n;
    MATRIX_RETURN_IF_ERROR(CheckSize(out.size()));
  }
  out.append(s, b, std::string::npos);
  MATRIX_RETURN_IF_ERROR(CheckSize(out.size()));
  return Json(std::move(out));
}

StatusOr<Json> FirstLast(Args& a, bool first, const char* fn) {
  const Json& v = a[0].get();
  if (v.is_array()) {
    if (v.empty()) return Json();
    return first ? v.front() : v.back();
  }
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s.empty()) return Json("");
    auto offs = CodePointOffsets(s);
    size_t k = first ? 0 : offs.size() - 2;
    return Json(s.substr(offs[k], offs[k + 1] - offs[k]));
  }
  return InvalidArgument(std::string(fn) + "() of a " + TypeName(v));
}
StatusOr<Json> FnFirst(Args& a, const Node&) { return FirstLast(a, true, "first"); }
StatusOr<Json> FnLast(Args& a, const Node&) { return FirstLast(a, false, "last"); }

StatusOr<Json> ObjectParts(Args& a, int which, const char* fn) {
  const Json& v = a[0].get();
  Json out = Json::array();
  if (v.is_null()) return out;
  if (!v.is_object()) return InvalidArgument(std::string(fn) + "() expects an object, got " + TypeName(v));
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (which == 0) out.push_back(it.key());
    if (which == 1) out.push_back(it.value());
    if (which == 2) out.push_back(Json::array({it.key(), it.value()}));
  }
  return out;
}
StatusOr<Json> FnKeys(Args& a, const Node&) { return ObjectParts(a, 0, "keys"); }
StatusOr<Json> FnValues(Args& a, const Node&) { return ObjectParts(a, 1, "values"); }
StatusOr<Json> FnItems(Args& a, const Node&) { return ObjectParts(a, 2, "items"); }

StatusOr<Json> FnGet(Args& a, const Node&) {
  const Json& v = a[0].get();
  const Json& k = a[1].get();
  Json dflt = a.size() > 2 ? a[2].get() : Json();
  int64_t i;
  if (v.is_object() && k.is_string()) {
    auto it = v.find(k.get_ref<const std::string&>());
    return it == v.end() ? dflt : *it;
  }
  if (v.is_array() && AsInt(k, &i)) {
    int64_t n = static_cast<int64_t>(v.size());
    if (i < 0) i += n;
    return (i < 0 || i >= n) ? dflt : v[static_cast<size_t>(i)];
  }
  if (v.is_null()) return dflt;
  return InvalidArgument(std::string("get() cannot index a ") + TypeName(v) + " with a " + TypeName(k));
}

StatusOr<Json> FnSorted(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (!v.is_array()) return InvalidArgument(std::string("sort() expects a list, got ") + TypeName(v));
  std::vector<Json> items(v.begin(), v.end());
  for (size_t i = 1; i < items.size(); ++i) {
    int cmp;
    if (!Order(items[i], items[0], &cmp)) {
      return InvalidArgument(std::string("sort() cannot compare ") + TypeName(items[i]) + " with " +
                             TypeName(items[0]));
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Json& x, const Json& y) {
    int cmp = 0;
    Order(x, y, &cmp);
    return cmp < 0;
  });
  return Json(std::move(items));
}

StatusOr<Json> FnUnique(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (!v.is_array()) return InvalidArgument(std::string("unique() expects a list, got ") + TypeName(v));
  std::set<Json> seen;
  Json out = Json::array();
  for (const auto& e : v) {
    if (seen.insert(e).second) out.push_back(e);
  }
  return out;
}

StatusOr<Json> FnRange(Args& a, const Node&) {
  int64_t b = 0, e = 0, step = 1;
  bool ok = true;
  if (a.size() == 1) {
    ok = AsInt(a[0].get(), &e);
  } else {
    ok = AsInt(a[0].get(), &b) && AsInt(a[1].get(), &e) && (a.size() < 3 || AsInt(a[2].get(), &step));
  }
  if (!ok) return InvalidArgument("range() expects integers");
  if (step == 0) return InvalidArgument("range() step must not be zero");
  Json out = Json::array();
  for (int64_t i = b; step > 0 ? i < e : i > e; i += step) {
    if (static_cast<int64_t>(out.size()) >= kMaxRangeLength) {
      return ResourceExhausted("range() longer than " + std::to_string(kMaxRangeLength));
    }
    out.push_back(i);
  }
  return out;
}

StatusOr<Json> FnToJson(Args& a, const Node&) {
  int64_t indent = -1;
  if (a.size() > 1 && (!AsInt(a[1].get(), &indent) || indent < 0 || indent > 16)) {
    return InvalidArgument("tojson(): indent must be an integer between 0 and 16");
  }
  return Json(DumpJson(a[0].get(), static_cast<int>(indent)));
}

StatusOr<Json> FnFromJson(Args& a, const Node&) {
  const Json& v = a[0].get();
  if (!v.is_string()) return InvalidArgument(std::string("fromjson() expects a string, got ") + TypeName(v));
  Json parsed = Json::parse(v.get_ref<const std::string&>(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return InvalidArgument("fromjson(): not valid JSON");
  return parsed;
}

const FuncDef kFunctions[] = {
    {"len", 1, 1, FnLen, false},          {"length", 1, 1, FnLen, false},
    {"count", 1, 1, FnLen, false},        {"lower", 1, 1, FnLower, false},
    {"upper", 1, 1, FnUpper, false},      {"capitalize", 1, 1, FnCapitalize, false},
    {"trim", 1, 1, FnTrim, false},        {"strip", 1, 1, FnTrim, false},
    {"int", 1, 1, FnInt, false},          {"float", 1, 1, FnFloat, false},
    {"str", 1, 1, FnStr, false},          {"string", 1, 1, FnStr, false},
    {"bool", 1, 1, FnBool, false},        {"contains", 2, 2, FnContains, false},
    {"startswith", 2, 2, FnStartsWith, false}, {"endswith", 2, 2, FnEndsWith, false},
    {"regex", 2, 2, FnRegex, false},      {"default", 1, 3, FnDefault, true},
    {"d", 1, 3, FnDefault, true},         {"min", 1, -1, FnMin, false},
    {"max", 1, -1, FnMax, false},         {"sum", 1, 2, FnSum, false},
    {"abs", 1, 1, FnAbs, false},          {"round", 1, 2, FnRound, false},
    {"join", 1, 2, FnJoin, false},        {"split", 1, 2, FnSplit, false},
    {"replace", 3, 4, FnReplace, false},  {"first", 1, 1, FnFirst, false},
    {"last", 1, 1, FnLast, false},        {"keys", 1, 1, FnKeys, false},
    {"values", 1, 1, FnValues, false},    {"items", 1, 1, FnItems, false},
    {"get", 2, 3, FnGet, false},          {"sort", 1, 1, FnSorted, false},
    {"sorted", 1, 1, FnSorted, false},    {"unique", 1, 1, FnUnique, false},
    {"range", 1, 3, FnRange, false},      {"tojson", 1, 2, FnToJson, false},
    {"fromjson", 1, 1, FnFromJson, false},
};

int FindFunction(std::string_view name) {
  for (size_t i = 0; i < sizeof(kFunctions) / sizeof(kFunctions[0]); ++i) {
    if (name == kFunctions[i].name) return static_cast<int>(i);
  }
  return -1;
}

// ---------------------------------------------------------------------------
// Arithmetic and comparison

StatusOr<Json> Repeat(const Json& seq, const Json& count) {
  int64_t n;
  if (!AsInt(count, &n)) return InvalidArgument("a string or list can only be repeated an integer number of times");
  if (n < 0) n = 0;
  size_t unit = seq.is_string() ? seq.get_ref<const std::string&>().size() : seq.size() * 16;
  if (unit != 0 && static_cast<uint64_t>(n) > kMaxBuiltValueBytes / unit) {
    return ResourceExhausted("repetition result exceeds the limit of " + std::to_string(kMaxBuiltValueBytes) + " bytes");
  }
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.get_ref<const std::string&>();
    return Json(std::move(out));
  }
  Json out = Json::array();
  for (int64_t i = 0; i < n; ++i) {
    for (const auto& e : seq) out.push_back(e);
  }
  return out;
}

const char* OpText(BinOp op) {
  switch (op) {
    case BinOp::kAdd: return "+";
    case BinOp::kSub: return "-";
    case BinOp::kMul: return "*";
    case BinOp::kDiv: return "/";
    case BinOp::kFloorDiv: return "//";
    case BinOp::kMod: return "%";
    case BinOp::kLt: return "<";
    case BinOp::kLe: return "<=";
    case BinOp::kGt: return ">";
    case BinOp::kGe: return ">=";
    default: return "?";
  }
}

StatusOr<Json> Arith(BinOp op, const Json& l, const Json& r) {
  if (op == BinOp::kAdd) {
    if (l.is_string() && r.is_string()) {
      MATRIX_RETURN_IF_ERROR(CheckSize(l.get_ref<const std::string&>().size() +
                                       r.get_ref<const std::string&>().size()));
      return Json(l.get_ref<const std::string&>() + r.get_ref<const std::string&>());
    }
    if (l.is_array() && r.is_array()) {
      Json out = l;
      for (const auto& e : r) out.push_back(e);
      return out;
    }
  }
  if (op == BinOp::kMul) {
    if ((l.is_string() || l.is_array()) && r.is_number()) return Repeat(l, r);
    if ((r.is_string() || r.is_array()) && l.is_number()) return Repeat(r, l);
  }
  if (!l.is_number() || !r.is_number()) {
    return InvalidArgument(std::string("'") + OpText(op) + "' cannot combine " + TypeName(l) +
                           " and " + TypeName(r));
  }
  int64_t x, y;
  if (AsInt(l, &x) && AsInt(r, &y) && op != BinOp::kDiv) {
    int64_t out = 0;
    switch (op) {
      case BinOp::kAdd:
        if (__builtin_add_overflow(x, y, &out)) return InvalidArgument("integer overflow in '+'");
        return Json(out);
      case BinOp::kSub:
        if (__builtin_sub_overflow(x, y, &out)) return InvalidArgument("integer overflow in '-'");
        return Json(out);
      case BinOp::kMul:
        if (__builtin_mul_overflow(x, y, &out)) return InvalidArgument("integer overflow in '*'");
        return Json(out);
      case BinOp::kFloorDiv:
      case BinOp::kMod: {
        if (y == 0) return InvalidArgument("division by zero");
        if (x == INT64_MIN && y == -1) return InvalidArgument("integer overflow in division");
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        return Json(op == BinOp::kFloorDiv ? q : m);
      }
      default: break;
    }
  }
  double a = AsDouble(l), b = AsDouble(r);
  switch (op) {
    case BinOp::kAdd: return Json(a + b);
    case BinOp::kSub: return Json(a - b);
    case BinOp::kMul: return Json(a * b);
    case BinOp::kDiv:
      if (b == 0) return InvalidArgument("division by zero");
      return Json(a / b);
    case BinOp::kFloorDiv:
      if (b == 0) return InvalidArgument("division by zero");
      return Json(std::floor(a / b));
    case BinOp::kMod: {
      if (b == 0) return InvalidArgument("division by zero");
      double m = std::fmod(a, b);
      if (m != 0 && ((m < 0) != (b < 0))) m += b;
      return Json(m);
    }
    default: return Internal("bad arithmetic operator");
  }
}

// ---------------------------------------------------------------------------
// Evaluator

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
        const FuncDef& f = kFunctions[n.fn];
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

// ---------------------------------------------------------------------------
// Lexer and parser

struct Token {
  enum Kind { kEnd, kInt, kFloat, kString, kIdent, kOp } kind = kEnd;
  std::string text;  // identifier, operator, or decoded string
  Json value;        // numbers
  size_t pos = 0;
  size_t end = 0;
};

const char* const kTests[] = {"defined", "undefined", "none", "string", "number", "integer",
                              "float", "boolean", "list", "mapping", "even", "odd"};

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  std::unique_ptr<Node> Run() {
    if (!Lex()) return nullptr;
    auto root = ParseExpr();
    if (!root) return nullptr;
    if (Peek().kind != Token::kEnd) {
      Fail(Peek().pos, "expected end of expression but found " + Describe(Peek()));
      return nullptr;
    }
    return root;
  }

  const std::string& error() const { return error_; }
  size_t error_offset() const { return error_pos_; }

 private:
  // --- lexer ---
  bool Lex() {
    size_t i = 0;
    const std::string_view s = text_;
    while (true) {
      while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      Token t;
      t.pos = i;
      if (i >= s.size()) {
        t.kind = Token::kEnd;
        t.end = i;
        tokens_.push_back(std::move(t));
        return true;
      }
      char c = s[i];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t b = i;
        bool is_float = false;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
        if (i + 1 < s.size() && s[i] == '.' && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
          is_float = true;
          ++i;
          while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
        }
        if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
          size_t j = i + 1;
          if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
          if (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) {
            is_float = true;
            i = j;
            while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
          }
        }
        if (i < s.size() && (std::isalpha(static_cast<unsigned char>(s[i])) || s[i] == '_')) {
          return Fail(i, "malformed number");
        }
        std::string num(s.substr(b, i - b));
        errno = 0;
        if (is_float) {
          t.kind = Token::kFloat;
          t.value = std::strtod(num.c_str(), nullptr);
        } else {
          t.kind = Token::kInt;
          long long v = std::strtoll(num.c_str(), nullptr, 10);
          if (errno == ERANGE) return Fail(b, "integer literal out of range");
          t.value = static_cast<int64_t>(v);
        }
        t.text = num;
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t b = i;
        while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_')) ++i;
        t.kind = Token::kIdent;
        t.text = std::string(s.substr(b, i - b));
      } else if (c == '"' || c == '\'') {
        t.kind = Token::kString;
        if (!LexString(&i, &t.text)) return false;
      } else {
        static const char* const kOps[] = {"==", "!=", "<=", ">=", "=~", "!~", "&&", "||", "//",
                                           "(", ")", "[", "]", "{", "}", ",", ":", ".", "+", "-",
                                           "*", "/", "%", "<", ">", "!", "|", "~"};
        bool found = false;
        for (const char* op : kOps) {
          size_t n = std::char_traits<char>::length(op);
          if (s.substr(i, n) == op) {
            t.kind = Token::kOp;
            t.text = op;
            i += n;
            found = true;
            break;
          }
        }
        if (!found) {
          if (c == '=') return Fail(i, "unexpected '=' (use '==' to compare)");
          return Fail(i, std::string("unexpected character '") + c + "'");
        }
      }
      t.end = i;
      tokens_.push_back(std::move(t));
    }
  }

  bool LexString(size_t* pos, std::string* out) {
    const std::string_view s = text_;
    char q = s[*pos];
    size_t start = *pos;
    size_t i = *pos + 1;
    while (true) {
      if (i >= s.size()) return Fail(start, "unterminated string");
      char c = s[i];
      if (c == q) {
        ++i;
        break;
      }
      if (c != '\\') {
        out->push_back(c);
        ++i;
        continue;
      }
      if (i + 1 >= s.size()) return Fail(start, "unterminated string");
      char e = s[i + 1];
      i += 2;
      switch (e) {
        case 'n': out->push_back('\n'); break;
        case 't': out->push_back('\t'); break;
        case 'r': out->push_back('\r'); break;
        case '0': out->push_back('\0'); break;
        case '\\': out->push_back('\\'); break;
        case '\'': out->push_back('\''); break;
        case '"': out->push_back('"'); break;
        case 'u': {
          if (i + 4 > s.size()) return Fail(i - 2, "malformed \\u escape");
          uint32_t cp = 0;
          for (int k = 0; k < 4; ++k) {
            char h = s[i + k];
            if (!std::isxdigit(static_cast<unsigned char>(h))) return Fail(i - 2, "malformed \\u escape");
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                     ? h - '0'
                                                     : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10);
          }
          i += 4;
          AppendUtf8(out, cp);
          break;
        }
        default:
          // Unknown escapes stay as written, so regex patterns like "\d+" work.
          out->push_back('\\');
          out->push_back(e);
      }
    }
    *pos = i;
    return true;
  }

  // --- token access ---
  const Token& Peek(size_t ahead = 0) const {
    size_t i = std::min(idx_ + ahead, tokens_.size() - 1);
    return tokens_[i];
  }
  const Token& Next() {
    const Token& t = tokens_[idx_];
    if (idx_ + 1 < tokens_.size()) ++idx_;
    return t;
  }
  bool IsOp(const char* op, size_t ahead = 0) const {
    const Token& t = Peek(ahead);
    return t.kind == Token::kOp && t.text == op;
  }
  bool IsWord(const char* w, size_t ahead = 0) const {
    const Token& t = Peek(ahead);
    return t.kind == Token::kIdent && t.text == w;
  }
  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case Token::kEnd: return "end of input";
      case Token::kString: return "string " + Quote(t.text);
      case Token::kInt:
      case Token::kFloat: return "number " + t.text;
      default: return "'" + t.text + "'";
    }
  }
  bool Fail(size_t pos, std::string msg) {
    if (error_.empty()) {
      error_pos_ = pos;
      error_ = "position " + std::to_string(pos + 1) + ": " + std::move(msg);
    }
    return false;
  }
  std::unique_ptr<Node> FailNode(size_t pos, std::string msg) {
    Fail(pos, std::move(msg));
    return nullptr;
  }
  bool Expect(const char* op, const char* context) {
    if (IsOp(op)) {
      Next();
      return true;
    }
    return Fail(Peek().pos, std::string("expected '") + op + "'" + context + " but found " + Describe(Peek()));
  }

  // Finishes a node spanning [start, end of the previous token).
  std::unique_ptr<Node> Finish(std::unique_ptr<Node> n, size_t start) {
    size_t end = idx_ > 0 ? std::max(start, tokens_[idx_ - 1].end) : start;
    n->src = std::string(text_.substr(start, end - start));
    int d = 0;
    for (const auto& k : n->kids) {
      if (k) d = std::max(d, k->depth);
    }
    n->depth = d + 1;
    if (n->depth > kMaxExprDepth) return FailNode(start, "expression nested too deeply");
    return n;
  }

  static std::unique_ptr<Node> Make(NodeKind kind) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    return n;
  }

  struct DepthGuard {
    explicit DepthGuard(int* d) : d_(d) { ++*d_; }
    ~DepthGuard() { --*d_; }
    int* d_;
  };
  bool TooDeep() {
    if (depth_ <= kMaxExprDepth) return false;
    Fail(Peek().pos, "expression nested too deeply");
    return true;
  }

  // --- grammar ---
  std::unique_ptr<Node> ParseExpr() {
    DepthGuard g(&depth_);
    if (TooDeep()) return nullptr;
    size_t start = Peek().pos;
    auto value = ParseOr();
    if (!value) return nullptr;
    if (!IsWord("if")) return value;
    Next();
    auto cond = ParseOr();
    if (!cond) return nullptr;
    std::unique_ptr<Node> other;
    if (IsWord("else")) {
      Next();
      other = ParseExpr();
      if (!other) return nullptr;
    }
    auto n = Make(NodeKind::kTernary);
    n->kids.push_back(std::move(value));
    n->kids.push_back(std::move(cond));
    n->kids.push_back(std::move(other));
    return Finish(std::move(n), start);
  }

  std::unique_ptr<Node> ParseOr() {
    size_t start = Peek().pos;
    auto l = ParseAnd();
    while (l && (IsWord("or") || IsOp("||"))) {
      Next();
      auto r = ParseAnd();
      if (!r) return nullptr;
      auto n = Make(NodeKind::kOr);
      n->kids.push_back(std::move(l));
      n->kids.push_back(std::move(r));
      l = Finish(std::move(n), start);
    }
    return l;
  }

  std::unique_ptr<Node> ParseAnd() {
    size_t start = Peek().pos;
    auto l = ParseNot();
    while (l && (IsWord("and") || IsOp("&&"))) {
      Next();
      auto r = ParseNot();
      if (!r) return nullptr;
      auto n = Make(NodeKind::kAnd);
      n->kids.push_back(std::move(l));
      n->kids.push_back(std::move(r));
      l = Finish(std::move(n), start);
    }
    return l;
  }

  std::unique_ptr<Node> ParseNot() {
    DepthGuard g(&depth_);
    if (TooDeep()) return nullptr;
    size_t start = Peek().pos;
    if (IsWord("not") || IsOp("!")) {
      Next();
      auto operand = ParseNot();
      if (!operand) return nullptr;
      auto n = Make(NodeKind::kUnary);
      n->un = UnOp::kNot;
      n->kids.push_back(std::move(operand));
      return Finish(std::move(n), start);
    }
    return ParseComparison();
  }

  std::unique_ptr<Node> ParseComparison() {
    size_t start = Peek().pos;
    auto l = ParseConcat();
    if (!l) return nullptr;
    if (IsWord("is")) {
      Next();
      bool negate = false;
      if (IsWord("not")) {
        Next();
        negate = true;
      }
      const Token& t = Peek();
      bool known = false;
      if (t.kind == Token::kIdent) {
        for (const char* name : kTests) known = known || t.text == name;
      }
      if (!known) return FailNode(t.pos, "expected a test name after 'is' (defined, none, string, ...) but found " + Describe(t));
      auto n = Make(NodeKind::kTest);
      n->name = Next().text;
      n->negate = negate;
      n->kids.push_back(std::move(l));
      return Finish(std::move(n), start);
    }
    BinOp op;
    size_t skip = 1;
    if (IsOp("==")) op = BinOp::kEq;
    else if (IsOp("!=")) op = BinOp::kNe;
    else if (IsOp("<")) op = BinOp::kLt;
    else if (IsOp("<=")) op = BinOp::kLe;
    else if (IsOp(">")) op = BinOp::kGt;
    else if (IsOp(">=")) op = BinOp::kGe;
    else if (IsOp("=~")) op = BinOp::kMatch;
    else if (IsOp("!~")) op = BinOp::kNotMatch;
    else if (IsWord("in")) op = BinOp::kIn;
    else if (IsWord("not") && IsWord("in", 1)) {
      op = BinOp::kNotIn;
      skip = 2;
    } else {
      return l;
    }
    for (size_t k = 0; k < skip; ++k) Next();
    auto r = ParseConcat();
    if (!r) return nullptr;
    auto n = Make(NodeKind::kBinary);
    n->bin = op;
    if ((op == BinOp::kMatch || op == BinOp::kNotMatch) && r->kind == NodeKind::kLiteral) {
      if (!r->value.is_string()) return FailNode(Peek().pos, "a regex pattern must be a string");
      auto re = CompileRegex(r->value.get<std::string>());
      if (!re.ok()) return FailNode(tokens_[idx_ - 1].pos, re.status().message());
      n->re = std::move(re).value();
    }
    n->kids.push_back(std::move(l));
    n->kids.push_back(std::move(r));
    auto out = Finish(std::move(n), start);
    if (out && (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp("<=") || IsOp(">") || IsOp(">="))) {
      return FailNode(Peek().pos, "comparisons cannot be chained; use 'and'");
    }
    return out;
  }

  template <typename Sub>
  std::unique_ptr<Node> ParseLeftAssoc(Sub sub, std::initializer_list<std::pair<const char*, BinOp>> ops) {
    size_t start = Peek().pos;
    auto l = (this->*sub)();
    while (l) {
      const std::pair<const char*, BinOp>* hit = nullptr;
      for (const auto& o : ops) {
        if (IsOp(o.first)) hit = &o;
      }
      if (hit == nullptr) break;
      Next();
      auto r = (this->*sub)();
      if (!r) return nullptr;
      auto n = Make(NodeKind::kBinary);
      n->bin = hit->second;
      n->kids.push_back(std::move(l));
      n->kids.push_back(std::move(r));
      l = Finish(std::move(n), start);
    }
    return l;
  }

  std::unique_ptr<Node> ParseConcat() { return ParseLeftAssoc(&Parser::ParseSum, {{"~", BinOp::kConcat}}); }
  std::unique_ptr<Node> ParseSum() {
    return ParseLeftAssoc(&Parser::ParseProduct, {{"+", BinOp::kAdd}, {"-", BinOp::kSub}});
  }
  std::unique_ptr<Node> ParseProduct() {
    return ParseLeftAssoc(&Parser::ParseUnary, {{"*", BinOp::kMul}, {"/", BinOp::kDiv},
                                                {"//", BinOp::kFloorDiv}, {"%", BinOp::kMod}});
  }

  std::unique_ptr<Node> ParseUnary() {
    DepthGuard g(&depth_);
    if (TooDeep()) return nullptr;
    size_t start = Peek().pos;
    if (IsOp("-") || IsOp("+")) {
      bool neg = Next().text == "-";
      auto operand = ParseUnary();
      if (!operand) return nullptr;
      if (neg && operand->kind == NodeKind::kLiteral && operand->value.is_number()) {
        // Fold "-3" into a literal.
        if (operand->value.is_number_integer()) {
          operand->value = -operand->value.get<int64_t>();
        } else {
          operand->value = -operand->value.get<double>();
        }
        return Finish(std::move(operand), start);
      }
      auto n = Make(NodeKind::kUnary);
      n->un = neg ? UnOp::kNeg : UnOp::kPos;
      n->kids.push_back(std::move(operand));
      return Finish(std::move(n), start);
    }
    return ParsePostfix();
  }

  // Arguments after '(' has been consumed, up to and including ')'.
  bool ParseArgs(std::vector<std::unique_ptr<Node>>* out) {
    if (IsOp(")")) {
      Next();
      return true;
    }
    while (true) {
      auto a = ParseExpr();
      if (!a) return false;
      out->push_back(std::move(a));
      if (IsOp(",")) {
        Next();
        continue;
      }
      return Expect(")", " after function arguments");
    }
  }

  // A call of function `name` (token at name_pos) whose first argument, for
  // methods and filters, is `self`.
  std::unique_ptr<Node> ParseCall(const std::string& name, size_t name_pos, size_t start,
                                  std::unique_ptr<Node> self, bool has_parens) {
    int fn = FindFunction(name);
    if (fn < 0) return FailNode(name_pos, "unknown function '" + name + "'");
    auto n = Make(NodeKind::kCall);
    n->fn = fn;
    n->name = name;
    if (self) n->kids.push_back(std::move(self));
    if (has_parens && !ParseArgs(&n->kids)) return nullptr;
    const FuncDef& f = kFunctions[fn];
    int argc = static_cast<int>(n->kids.size());
    if (argc < f.min_args || (f.max_args >= 0 && argc > f.max_args)) {
      std::string want = f.min_args == f.max_args ? std::to_string(f.min_args)
                         : f.max_args < 0         ? std::to_string(f.min_args) + " or more"
                                                  : std::to_string(f.min_args) + " to " + std::to_string(f.max_args);
      return FailNode(name_pos, name + "() takes " + want + " argument(s), got " + std::to_string(argc));
    }
    if (name == "regex" && n->kids[1]->kind == NodeKind::kLiteral) {
      if (!n->kids[1]->value.is_string()) return FailNode(name_pos, "regex() pattern must be a string");
      auto re = CompileRegex(n->kids[1]->value.get<std::string>());
      if (!re.ok()) return FailNode(name_pos, re.status().message());
      n->re = std::move(re).value();
    }
    return Finish(std::move(n), start);
  }

  std::unique_ptr<Node> ParsePostfix() {
    size_t start = Peek().pos;
    auto n = ParsePrimary();
    while (n) {
      if (IsOp(".")) {
        Next();
        const Token& t = Peek();
        if (t.kind != Token::kIdent) return FailNode(t.pos, "expected a name after '.' but found " + Describe(t));
        std::string name = Next().text;
        if (IsOp("(")) {
          Next();
          n = ParseCall(name, t.pos, start, std::move(n), true);
          continue;
        }
        auto a = Make(NodeKind::kAttr);
        a->name = name;
        a->kids.push_back(std::move(n));
        n = Finish(std::move(a), start);
      } else if (IsOp("[")) {
        Next();
        std::unique_ptr<Node> lo, hi;
        if (!IsOp(":")) {
          lo = ParseExpr();
          if (!lo) return nullptr;
        }
        if (IsOp(":")) {
          Next();
          if (!IsOp("]")) {
            hi = ParseExpr();
            if (!hi) return nullptr;
          }
          if (!Expect("]", " to close the slice")) return nullptr;
          auto s = Make(NodeKind::kSlice);
          s->kids.push_back(std::move(n));
          s->kids.push_back(std::move(lo));
          s->kids.push_back(std::move(hi));
          n = Finish(std::move(s), start);
          continue;
        }
        if (!Expect("]", " to close the index")) return nullptr;
        auto x = Make(NodeKind::kIndex);
        x->kids.push_back(std::move(n));
        x->kids.push_back(std::move(lo));
        n = Finish(std::move(x), start);
      } else if (IsOp("|")) {
        Next();
        const Token& t = Peek();
        if (t.kind != Token::kIdent) return FailNode(t.pos, "expected a filter name after '|' but found " + Describe(t));
        std::string name = Next().text;
        bool parens = IsOp("(");
        if (parens) Next();
        n = ParseCall(name, t.pos, start, std::move(n), parens);
      } else {
        break;
      }
    }
    return n;
  }

  std::unique_ptr<Node> ParsePrimary() {
    const Token& t = Peek();
    size_t start = t.pos;
    switch (t.kind) {
      case Token::kEnd: return FailNode(t.pos, "expected a value but found end of input");
      case Token::kInt:
      case Token::kFloat:
      case Token::kString: {
        auto n = Make(NodeKind::kLiteral);
        n->value = t.kind == Token::kString ? Json(t.text) : t.value;
        Next();
        return Finish(std::move(n), start);
      }
      case Token::kIdent: {
        const std::string& w = t.text;
        if (w == "true" || w == "True" || w == "false" || w == "False" || w == "null" ||
            w == "none" || w == "None") {
          auto n = Make(NodeKind::kLiteral);
          if (w == "true" || w == "True") n->value = true;
          if (w == "false" || w == "False") n->value = false;
          Next();
          return Finish(std::move(n), start);
        }
        static const char* const kReserved[] = {"and", "or", "not", "in", "is", "if", "else"};
        for (const char* r : kReserved) {
          if (w == r) return FailNode(t.pos, "expected a value but found '" + w + "'");
        }
        std::string name = Next().text;
        if (IsOp("(")) {
          Next();
          return ParseCall(name, start, start, nullptr, true);
        }
        auto n = Make(NodeKind::kName);
        n->name = name;
        return Finish(std::move(n), start);
      }
      case Token::kOp: break;
    }
    if (IsOp("(")) {
      Next();
      auto inner = ParseExpr();
      if (!inner) return nullptr;
      if (!Expect(")", " to close '('")) return nullptr;
      return inner;
    }
    if (IsOp("[")) {
      Next();
      auto n = Make(NodeKind::kList);
      while (!IsOp("]")) {
        auto item = ParseExpr();
        if (!item) return nullptr;
        n->kids.push_back(std::move(item));
        if (IsOp(",")) {
          Next();
          continue;
        }
        if (!IsOp("]")) return FailNode(Peek().pos, "expected ',' or ']' in list but found " + Describe(Peek()));
      }
      Next();
      return Finish(std::move(n), start);
    }
    if (IsOp("{")) {
      Next();
      auto n = Make(NodeKind::kDict);
      while (!IsOp("}")) {
        auto key = ParseExpr();
        if (!key) return nullptr;
        if (!Expect(":", " after an object key")) return nullptr;
        auto value = ParseExpr();
        if (!value) return nullptr;
        n->kids.push_back(std::move(key));
        n->kids.push_back(std::move(value));
        if (IsOp(",")) {
          Next();
          continue;
        }
        if (!IsOp("}")) return FailNode(Peek().pos, "expected ',' or '}' in object but found " + Describe(Peek()));
      }
      Next();
      return Finish(std::move(n), start);
    }
    return FailNode(t.pos, "expected a value but found " + Describe(t));
  }

  std::string_view text_;
  std::vector<Token> tokens_;
  size_t idx_ = 0;
  int depth_ = 0;
  std::string error_;
  size_t error_pos_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------
// Expr

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
  Parser p(text);
  std::unique_ptr<Node> root = p.Run();
  if (!root) {
    *error_offset = p.error_offset();
    return InvalidArgument(p.error());
  }
  auto impl = std::make_shared<Impl>();
  impl->text = std::string(text);
  impl->root = std::move(root);
  return Expr(std::move(impl));
}

StatusOr<Json> Expr::Eval(const Scope& scope, EvalMode mode) const {
  Evaluator ev(scope);
  auto v = ev.Eval(*impl_->root, mode == EvalMode::kStrict);
  if (!v.ok()) return v.status();
  return v->take();
}

StatusOr<Json> Expr::Eval(const Json& ctx) const { return Eval(Scope(ctx), EvalMode::kLenient); }

StatusOr<Json> Expr::EvalStrict(const Json& ctx) const { return Eval(Scope(ctx), EvalMode::kStrict); }

StatusOr<bool> Expr::EvalBool(const Json& ctx) const {
  Scope scope(ctx);
  Evaluator ev(scope);
  auto v = ev.Eval(*impl_->root, false);
  if (!v.ok()) return v.status();
  return IsTruthy(v->get());
}

const std::string& Expr::text() const { return impl_->text; }

bool IsKnownFunction(std::string_view name) { return FindFunction(name) >= 0; }

}  // namespace matrix::config
