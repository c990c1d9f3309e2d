#include "common/base/json.h"

#include <algorithm>
#include <cctype>

#include "common/base/utf8.h"

namespace matrix {
namespace {

constexpr size_t kBad = std::string_view::npos;

size_t SkipSpace(std::string_view s, size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  return i;
}

// Past the string that opens at s[i]; kBad when it is not well formed.
size_t SkipString(std::string_view s, size_t i) {
  for (++i; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"') return i + 1;
    if (c == '\\') {
      ++i;
    } else if (c < 0x20) {
      return kBad;
    }
  }
  return kBad;
}

// Past the value that starts at s[i]; kBad when its brackets do not balance
// or a string or scalar in it is not well formed.
size_t SkipValue(std::string_view s, size_t i) {
  std::string open;  // brackets not closed yet
  do {
    i = SkipSpace(s, i);
    if (i >= s.size()) return kBad;
    const char c = s[i];
    if (c == '"') {
      if ((i = SkipString(s, i)) == kBad) return kBad;
    } else if (c == '{' || c == '[') {
      open.push_back(c);
      ++i;
    } else if (c == '}' || c == ']') {
      if (open.empty() || open.back() != (c == '}' ? '{' : '[')) return kBad;
      open.pop_back();
      ++i;
    } else if (c == ',' || c == ':') {
      if (open.empty()) return kBad;
      ++i;
    } else {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '-' || s[j] == '+' || s[j] == '.'))
        ++j;
      if (j == i) return kBad;
      i = j;
    }
  } while (!open.empty());
  return i;
}

}  // namespace

Json ParseJsonMembers(std::string_view s, const std::vector<std::string_view>& keys) {
  const Json bad(Json::value_t::discarded);
  Json out = Json::object();
  size_t i = SkipSpace(s, 0);
  if (i >= s.size() || s[i] != '{') return bad;
  i = SkipSpace(s, i + 1);
  if (i < s.size() && s[i] == '}') return SkipSpace(s, i + 1) == s.size() ? out : bad;
  while (true) {
    if (i >= s.size() || s[i] != '"') return bad;
    const size_t key_end = SkipString(s, i);
    if (key_end == kBad) return bad;
    const std::string_view key = s.substr(i + 1, key_end - i - 2);  // the wanted keys need no escapes
    i = SkipSpace(s, key_end);
    if (i >= s.size() || s[i] != ':') return bad;
    i = SkipSpace(s, i + 1);
    const size_t value_end = SkipValue(s, i);
    if (value_end == kBad) return bad;
    if (std::find(keys.begin(), keys.end(), key) != keys.end()) {
      Json value = Json::parse(s.substr(i, value_end - i), nullptr, /*allow_exceptions=*/false);
      if (value.is_discarded()) return bad;
      out[std::string(key)] = std::move(value);
    }
    i = SkipSpace(s, value_end);
    if (i < s.size() && s[i] == ',') {
      i = SkipSpace(s, i + 1);
      continue;
    }
    if (i < s.size() && s[i] == '}') return SkipSpace(s, i + 1) == s.size() ? out : bad;
    return bad;
  }
}

std::string DumpJson(const Json& j, int indent) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

namespace {

void AppendEscaped(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t plain = 0;  // start of the run of bytes written as they are
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + plain, i - plain);
    plain = i + 1;
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        out->append(esc, sizeof esc);
      }
    }
  }
  out->append(s.data() + plain, s.size() - plain);
}

}  // namespace

void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  if (IsValidUtf8(s)) {
    AppendEscaped(out, s);
  } else {
    AppendEscaped(out, ToValidUtf8(s));
  }
  out->push_back('"');
}

StatusOr<Json> ParseJson(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    // The parser quotes the bytes it stopped at; they may be anything.
    return InvalidArgument(what + ": invalid JSON: " + Printable(e.what()));
  }
}

}  // namespace matrix
