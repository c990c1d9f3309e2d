// The built-in functions and filters of the expression language, and the
// regex helpers of expr.h that regex() and `=~` use.
#include "common/config/expr_builtins.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <set>

#include "common/config/expr.h"
#include "common/config/expr_values.h"

namespace matrix::config {

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

namespace expr_internal {
namespace {

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

}  // namespace

int FindFunction(std::string_view name) {
  for (size_t i = 0; i < sizeof(kFunctions) / sizeof(kFunctions[0]); ++i) {
    if (name == kFunctions[i].name) return static_cast<int>(i);
  }
  return -1;
}

const FuncDef& FunctionAt(int index) { return kFunctions[index]; }

}  // namespace expr_internal
}  // namespace matrix::config
