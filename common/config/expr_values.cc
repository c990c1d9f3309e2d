// Value helpers and arithmetic of the expression language, and the public
// IsTruthy / ToDisplayString.
#include "common/config/expr_values.h"

#include <climits>
#include <cmath>

#include "common/config/expr.h"

namespace matrix::config {

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

namespace expr_internal {

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

namespace {

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

}  // namespace

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

}  // namespace expr_internal
}  // namespace matrix::config
