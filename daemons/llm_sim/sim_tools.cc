// Conversation identifiers and schema-valid tool-call arguments; see sim_tools.h.
#include "daemons/llm_sim/sim_tools.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "common/base/hash.h"

namespace matrix::llm_sim {
namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsAlpha(char c) { return IsUpper(c) || IsLower(c); }
bool IsAlnum(char c) { return IsAlpha(c) || IsDigit(c); }
bool IsWordChar(char c) { return IsAlnum(c) || c == '_'; }
bool IsEmailLocal(char c) { return IsAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'; }
bool IsEmailDomain(char c) { return IsAlnum(c) || c == '.' || c == '-'; }

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsDigit);
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

const char* const kPaymentPrefixes[] = {"credit_card_", "gift_card_", "debit_card_", "paypal_",
                                        "certificate_"};

bool IsPaymentMethod(std::string_view t) {
  for (const char* p : kPaymentPrefixes)
    if (StartsWith(t, p) && AllDigits(t.substr(std::string_view(p).size()))) return true;
  return false;
}

// lower-case words and a number joined by '_', at least two words: "sara_doe_496".
bool IsUserId(std::string_view t) {
  if (IsPaymentMethod(t)) return false;
  for (const char* p : kPaymentPrefixes)
    if (StartsWith(t, p)) return false;
  const size_t last = t.rfind('_');
  if (last == std::string_view::npos || !AllDigits(t.substr(last + 1))) return false;
  int words = 0;
  size_t pos = 0;
  while (pos < last) {
    size_t end = t.find('_', pos);
    if (end == std::string_view::npos || end > last) end = last;
    std::string_view w = t.substr(pos, end - pos);
    if (w.empty() || !std::all_of(w.begin(), w.end(), IsLower)) return false;
    ++words;
    pos = end + 1;
  }
  return words >= 2;
}

// Six upper-case letters and digits with at least one of each, and not a
// flight number (three letters then three digits).
bool IsReservationId(std::string_view t) {
  if (t.size() != 6) return false;
  int letters = 0, digits = 0;
  for (char c : t) {
    if (IsUpper(c)) ++letters;
    else if (IsDigit(c)) ++digits;
    else return false;
  }
  if (letters == 0 || digits == 0) return false;
  const bool flight = IsUpper(t[0]) && IsUpper(t[1]) && IsUpper(t[2]) && IsDigit(t[3]) &&
                      IsDigit(t[4]) && IsDigit(t[5]);
  return !flight;
}

// A capitalised word ("Yusuf", "O'Neil"): an upper-case letter, then at least
// one lower-case letter, apostrophes or hyphens. Returns its length, 0 if none.
size_t CapitalisedWord(std::string_view s, size_t pos) {
  if (pos >= s.size() || !IsUpper(s[pos])) return 0;
  size_t end = pos + 1;
  while (end < s.size() && (IsLower(s[end]) || s[end] == '\'' || s[end] == '-')) ++end;
  if (end == pos + 1 || !IsLower(s[pos + 1])) return 0;
  if (end < s.size() && IsAlnum(s[end])) return 0;
  return end - pos;
}

void ScanEmails(std::string_view s, FoundIds* out, std::vector<std::pair<size_t, size_t>>* spans) {
  for (size_t at = s.find('@'); at != std::string_view::npos; at = s.find('@', at + 1)) {
    size_t begin = at;
    while (begin > 0 && IsEmailLocal(s[begin - 1])) --begin;
    while (begin < at && !IsAlnum(s[begin])) ++begin;
    size_t end = at + 1;
    while (end < s.size() && IsEmailDomain(s[end])) ++end;
    while (end > at + 1 && !IsAlnum(s[end - 1])) --end;
    std::string_view domain = s.substr(at + 1, end - at - 1);
    if (begin == at || domain.find('.') == std::string_view::npos || domain.front() == '.') continue;
    out->Add(IdKind::kEmail, std::string(s.substr(begin, end - begin)));
    spans->push_back({begin, end});
  }
}

void ScanNames(std::string_view s, FoundIds* out) {
  static const std::string_view kLeads[] = {"name is ", "You are ", "you are ", "I am ", "I'm "};
  for (std::string_view lead : kLeads) {
    for (size_t p = s.find(lead); p != std::string_view::npos; p = s.find(lead, p + 1)) {
      const size_t first = p + lead.size();
      const size_t n1 = CapitalisedWord(s, first);
      if (n1 == 0 || first + n1 >= s.size() || s[first + n1] != ' ') continue;
      const size_t n2 = CapitalisedWord(s, first + n1 + 1);
      if (n2 == 0) continue;
      out->Add(IdKind::kFullName, std::string(s.substr(first, n1 + 1 + n2)));
    }
  }
  // JSON records: "first_name": "Yusuf", ... "last_name": "Rossi".
  auto string_value = [&](size_t key_end, size_t* value_end) -> std::string_view {
    size_t p = key_end;
    while (p < s.size() && (s[p] == ' ' || s[p] == ':')) ++p;
    if (p >= s.size() || s[p] != '"') return {};
    const size_t close = s.find('"', p + 1);
    if (close == std::string_view::npos) return {};
    *value_end = close + 1;
    return s.substr(p + 1, close - p - 1);
  };
  static const std::string_view kFirst = "\"first_name\"", kLast = "\"last_name\"";
  for (size_t p = s.find(kFirst); p != std::string_view::npos; p = s.find(kFirst, p + 1)) {
    size_t after = 0;
    std::string_view first = string_value(p + kFirst.size(), &after);
    if (first.empty() || CapitalisedWord(first, 0) != first.size()) continue;
    const size_t l = s.find(kLast, after);
    if (l == std::string_view::npos || l - after > 200) continue;
    size_t ignored = 0;
    std::string_view last = string_value(l + kLast.size(), &ignored);
    if (last.empty() || CapitalisedWord(last, 0) != last.size()) continue;
    out->Add(IdKind::kFullName, std::string(first) + " " + std::string(last));
  }
}

const char* const kFirstNames[] = {"Sara", "Yusuf", "Mei",   "Omar",  "Lucas", "Ava",  "Noah",
                                   "Fatima", "Ivan", "Chen", "Olivia", "Raj",  "Emma", "Mateo"};
const char* const kLastNames[] = {"Doe",   "Rossi", "Kovacs", "Silva", "Garcia", "Khan", "Lopez",
                                  "Ito",   "Novak", "Smith",  "Moreau", "Patel", "Berg", "Ahmed"};
const char* const kWords[] = {"blue",   "large",  "order",  "item",   "return", "exchange", "update",
                              "black",  "small",  "leather", "wireless", "steel", "cotton", "home",
                              "office", "travel", "standard", "express", "new",   "original"};

template <typename T, size_t N>
const char* PickOf(const T (&list)[N], SimRng* rng) {
  return list[rng->Below(static_cast<int64_t>(N))];
}

std::string Lower(std::string s) {
  for (char& c : s)
    if (IsUpper(c)) c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string Digits(SimRng* rng, int n) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += static_cast<char>('0' + (i == 0 ? rng->Range(1, 9) : rng->Below(10)));
  return out;
}

std::string SyntheticId(IdKind kind, SimRng* rng) {
  switch (kind) {
    case IdKind::kOrderId:
      return "#W" + Digits(rng, 7);
    case IdKind::kUserId:
      return Lower(PickOf(kFirstNames, rng)) + "_" + Lower(PickOf(kLastNames, rng)) + "_" +
             std::to_string(rng->Range(100, 9999));
    case IdKind::kItemId:
      return Digits(rng, 10);
    case IdKind::kEmail:
      return Lower(PickOf(kFirstNames, rng)) + "." + Lower(PickOf(kLastNames, rng)) +
             std::to_string(rng->Range(1000, 9999)) + "@example.com";
    case IdKind::kPaymentMethod: {
      static const char* const kKinds[] = {"credit_card_", "gift_card_", "paypal_"};
      return std::string(PickOf(kKinds, rng)) + Digits(rng, 7);
    }
    case IdKind::kZip:
      return Digits(rng, 5);
    case IdKind::kReservationId: {
      std::string s;
      auto letter = [&] { return static_cast<char>('A' + rng->Below(26)); };
      auto alnum = [&] {
        int64_t x = rng->Below(36);
        return static_cast<char>(x < 26 ? 'A' + x : '0' + (x - 26));
      };
      s += letter();
      s += alnum();
      s += static_cast<char>('0' + rng->Below(10));
      s += letter();
      s += alnum();
      s += alnum();
      return s;
    }
    case IdKind::kFullName:
    case IdKind::kCount:
      break;
  }
  return std::string(PickOf(kFirstNames, rng)) + " " + PickOf(kLastNames, rng);
}

std::string NamePart(const std::string& full, int part) {
  if (part == 0) return full;
  const size_t space = full.find(' ');
  if (space == std::string::npos) return full;
  return part == 1 ? full.substr(0, space) : full.substr(space + 1);
}

// First non-null type named by the schema; "" when it names none.
std::string SchemaType(const Json& schema) {
  auto t = schema.find("type");
  if (t == schema.end()) return {};
  if (t->is_string()) return t->get<std::string>();
  if (t->is_array())
    for (const Json& x : *t)
      if (x.is_string() && x != "null") return x.get<std::string>();
  return {};
}

const Json& EmptySchema() {
  static const Json kEmpty = Json::object();
  return kEmpty;
}

struct Gen {
  const FoundIds& ids;
  SimRng* rng;
  const Json& root;  // the whole schema: "$ref" targets resolve inside it
  const char* const* words;
  int64_t word_count;

  std::string Word() const { return words[rng->Below(word_count)]; }
};

// From this depth on a value is as small as its schema allows (required
// properties only, minItems items, options without "$ref" first), so that
// recursive schemas end; past kMaxDepth objects and arrays are left empty.
constexpr int kLeanDepth = 6;
constexpr int kMaxDepth = 24;

// Follows "$ref" chains ("#", "#/definitions/x", "#/$defs/x", any JSON
// pointer into the schema). References that leave the document or do not
// resolve give the empty (unconstrained) schema.
const Json& Resolve(const Json& schema, const Gen& g) {
  const Json* s = &schema;
  for (int hops = 0; hops < 16 && s->is_object(); ++hops) {
    auto ref = s->find("$ref");
    if (ref == s->end() || !ref->is_string()) return *s;
    const std::string& target = ref->get_ref<const std::string&>();
    if (target.empty() || target[0] != '#') return EmptySchema();
    try {
      const Json::json_pointer pointer(target.substr(1));
      if (!g.root.contains(pointer)) return EmptySchema();
      s = &g.root.at(pointer);
    } catch (const Json::exception&) {
      return EmptySchema();
    }
  }
  return s->is_object() ? *s : EmptySchema();
}

// `base` without `drop`, with the keywords of `part` laid over it;
// "properties" and "required" are united rather than replaced.
Json Merge(const Json& base, const char* drop, const Json& part) {
  Json out = base;
  out.erase(drop);
  if (!part.is_object()) return out;
  for (auto it = part.begin(); it != part.end(); ++it) {
    if (it.key() == "properties" && it->is_object() && out.contains("properties") &&
        out["properties"].is_object()) {
      for (auto p = it->begin(); p != it->end(); ++p) out["properties"][p.key()] = p.value();
    } else if (it.key() == "required" && it->is_array() && out.contains("required") &&
               out["required"].is_array()) {
      for (const Json& r : *it)
        if (std::find(out["required"].begin(), out["required"].end(), r) == out["required"].end())
          out["required"].push_back(r);
    } else {
      out[it.key()] = it.value();
    }
  }
  return out;
}

// The type of the value to build: one of the non-null types the schema names
// (chosen at random when it names several), "null" when that is the only
// one, else inferred from the keywords present.
std::string ChooseType(const Json& schema, const Gen& g) {
  std::vector<std::string> types;
  bool null_allowed = false;
  if (auto t = schema.find("type"); t != schema.end()) {
    const Json list = t->is_array() ? *t : Json::array({*t});
    for (const Json& x : list) {
      if (!x.is_string()) continue;
      if (x == "null") null_allowed = true;
      else types.push_back(x.get<std::string>());
    }
  }
  if (types.size() == 1) return types[0];
  if (!types.empty()) return types[static_cast<size_t>(g.rng->Below(static_cast<int64_t>(types.size())))];
  if (null_allowed) return "null";
  auto has = [&](const char* k) { return schema.contains(k); };
  if (has("properties") || has("required") || has("additionalProperties") || has("minProperties"))
    return "object";
  if (has("items") || has("minItems") || has("maxItems") || has("uniqueItems")) return "array";
  if (has("minimum") || has("maximum") || has("exclusiveMinimum") || has("exclusiveMaximum") ||
      has("multipleOf"))
    return "number";
  return "string";
}

// A numeric keyword of the schema, clamped so that integer arithmetic on it is safe.
double NumberOr(const Json& schema, const char* key, double def) {
  auto it = schema.find(key);
  const double v = it != schema.end() && it->is_number() ? it->get<double>() : def;
  return std::clamp(v, -1e15, 1e15);
}

// Numeric bounds: "minimum"/"maximum", "exclusiveMinimum"/"exclusiveMaximum"
// as numbers (draft 6 and later) or as booleans on the plain bound (draft 4).
struct Bounds {
  std::optional<double> lo, hi;
  bool lo_open = false, hi_open = false;
};

Bounds BoundsOf(const Json& schema) {
  Bounds b;
  auto bound = [&](const char* plain, const char* exclusive, std::optional<double>* v, bool* open,
                   bool lower) {
    if (auto p = schema.find(plain); p != schema.end() && p->is_number()) *v = NumberOr(schema, plain, 0);
    auto e = schema.find(exclusive);
    if (e == schema.end()) return;
    if (e->is_boolean()) {
      *open = v->has_value() && e->get<bool>();
    } else if (e->is_number()) {
      const double x = NumberOr(schema, exclusive, 0);
      if (!v->has_value() || (lower ? x >= **v : x <= **v)) {
        *v = x;
        *open = true;
      }
    }
  };
  bound("minimum", "exclusiveMinimum", &b.lo, &b.lo_open, true);
  bound("maximum", "exclusiveMaximum", &b.hi, &b.hi_open, false);
  return b;
}

Json IntegerFor(const Json& schema, const Gen& g) {
  const Bounds b = BoundsOf(schema);
  auto lower = [&] { return static_cast<int64_t>(b.lo_open ? std::floor(*b.lo) + 1 : std::ceil(*b.lo)); };
  auto upper = [&] { return static_cast<int64_t>(b.hi_open ? std::ceil(*b.hi) - 1 : std::floor(*b.hi)); };
  int64_t lo = 1, hi = 100;
  if (b.lo && b.hi) {
    lo = lower();
    hi = upper();
  } else if (b.lo) {
    lo = lower();
    hi = lo + 99;
  } else if (b.hi) {
    hi = upper();
    lo = hi >= 1 ? 1 : hi - 99;
  }
  if (hi < lo) return lo;
  const double step = NumberOr(schema, "multipleOf", 0);
  if (step >= 1 && step == std::floor(step)) {
    const int64_t m = static_cast<int64_t>(step);
    const int64_t k_lo = static_cast<int64_t>(std::ceil(static_cast<double>(lo) / static_cast<double>(m)));
    const int64_t k_hi = static_cast<int64_t>(std::floor(static_cast<double>(hi) / static_cast<double>(m)));
    if (k_lo <= k_hi) return g.rng->Range(k_lo, k_hi) * m;
  }
  return g.rng->Range(lo, hi);
}

Json NumberFor(const Json& schema, const Gen& g) {
  const Bounds b = BoundsOf(schema);
  double lo = 0, hi = 100;
  if (b.lo && b.hi) {
    lo = *b.lo;
    hi = *b.hi;
  } else if (b.lo) {
    lo = *b.lo;
    hi = lo + 100;
  } else if (b.hi) {
    hi = *b.hi;
    lo = hi >= 0 ? 0 : hi - 100;
  }
  if (hi < lo) return lo;
  const double step = NumberOr(schema, "multipleOf", 0);
  if (step > 0) {
    const double k_lo = std::ceil(lo / step), k_hi = std::floor(hi / step);
    if (k_lo <= k_hi && k_hi - k_lo < 1e12)
      return static_cast<double>(g.rng->Range(static_cast<int64_t>(k_lo), static_cast<int64_t>(k_hi))) * step;
  }
  // Two decimals, as people write amounts; the midpoint when rounding lands on an open bound.
  double v = std::round((lo + g.rng->Uniform() * (hi - lo)) * 100.0) / 100.0;
  if (v < lo || v > hi || (b.lo_open && v <= lo) || (b.hi_open && v >= hi)) v = lo + (hi - lo) / 2;
  return v;
}

Json ValueFor(const Json& schema, std::string_view name, const Gen& g, int depth, int64_t count_hint);

Json ObjectFor(const Json& schema, const Gen& g, int depth) {
  Json obj = Json::object();
  if (depth > kMaxDepth) return obj;
  const bool lean = depth >= kLeanDepth;
  auto props = schema.find("properties");
  auto req = schema.find("required");
  const bool has_required = req != schema.end() && req->is_array();
  std::set<std::string> required;
  if (has_required)
    for (const Json& r : *req)
      if (r.is_string()) required.insert(r.get<std::string>());
  const bool has_props = props != schema.end() && props->is_object();
  if (has_props) {
    // "new_x" after "x", so that a replacement list matches the list it replaces.
    for (int pass = 0; pass < 2; ++pass) {
      for (auto it = props->begin(); it != props->end(); ++it) {
        const std::string& key = it.key();
        const bool renewal = StartsWith(key, "new_");
        if (renewal != (pass == 1)) continue;
        const bool must = required.count(key) > 0 || (!has_required && !lean);
        if (!must && (lean || g.rng->Uniform() >= 0.5)) continue;
        int64_t hint = -1;
        if (renewal) {
          auto old = obj.find(key.substr(4));
          if (old != obj.end() && old->is_array()) hint = static_cast<int64_t>(old->size());
        }
        obj[key] = ValueFor(it.value(), key, g, depth + 1, hint);
      }
    }
  }
  // Required names without a schema of their own still have to be present.
  for (const std::string& key : required)
    if (!obj.contains(key)) obj[key] = ValueFor(EmptySchema(), key, g, depth + 1, -1);
  // minProperties: the optional properties left out come back in order.
  const size_t min_props = static_cast<size_t>(std::clamp(NumberOr(schema, "minProperties", 0), 0.0, 64.0));
  if (has_props)
    for (auto it = props->begin(); it != props->end() && obj.size() < min_props; ++it)
      if (!obj.contains(it.key())) obj[it.key()] = ValueFor(it.value(), it.key(), g, depth + 1, -1);
  return obj;
}

Json StringFor(const Json& schema, std::string_view name, const Gen& g) {
  auto format_it = schema.find("format");
  const std::string format =
      format_it != schema.end() && format_it->is_string() ? format_it->get<std::string>() : "";
  const size_t min_len = static_cast<size_t>(std::clamp(NumberOr(schema, "minLength", 0), 0.0, 4096.0));
  const double max_len = NumberOr(schema, "maxLength", -1);
  auto fits = [&](const std::string& s) {
    return s.size() >= min_len && (max_len < 0 || s.size() <= static_cast<size_t>(max_len));
  };
  std::optional<PropertyId> id = IdForProperty(name);
  if (!id && format == "email") id = PropertyId{IdKind::kEmail, 0};
  if (id) {
    std::string v = IdValue(*id, g.ids, g.rng);
    if (fits(v)) return v;
  }
  char buf[64];
  if (format == "date" || format == "date-time") {
    std::snprintf(buf, sizeof(buf), "2025-%02d-%02d", static_cast<int>(g.rng->Range(1, 12)),
                  static_cast<int>(g.rng->Range(1, 28)));
    return format == "date" ? std::string(buf) : std::string(buf) + "T12:00:00Z";
  }
  if (format == "uri") return std::string("https://example.com/") + g.Word();
  if (format == "uuid") {
    const std::string h = Hex64(g.rng->Next()) + Hex64(g.rng->Next());
    return h.substr(0, 8) + "-" + h.substr(8, 4) + "-4" + h.substr(13, 3) + "-a" + h.substr(17, 3) +
           "-" + h.substr(20, 12);
  }
  std::string s = g.Word();
  for (int64_t i = g.rng->Below(3); i > 0; --i) s += " " + g.Word();
  while (s.size() < min_len) s += " " + g.Word();
  if (max_len >= 0 && s.size() > static_cast<size_t>(max_len)) {
    s.resize(static_cast<size_t>(max_len));
    while (s.size() > min_len && s.back() == ' ') s.pop_back();
  }
  return s;
}

Json ArrayFor(const Json& schema, std::string_view name, const Gen& g, int depth, int64_t count_hint) {
  Json arr = Json::array();
  if (depth > kMaxDepth) return arr;
  const bool lean = depth >= kLeanDepth;
  // "items" as one schema for every element, or (draft 4-7 tuples) one schema per position.
  auto items_it = schema.find("items");
  const bool tuple = items_it != schema.end() && items_it->is_array();
  const Json& items = items_it != schema.end() && items_it->is_object() ? Resolve(*items_it, g) : EmptySchema();
  auto extra_it = schema.find("additionalItems");
  const Json& extra = extra_it != schema.end() && extra_it->is_object() ? *extra_it : EmptySchema();
  const bool has_min = schema.contains("minItems"), has_max = schema.contains("maxItems");
  const int64_t min_items = std::clamp<int64_t>(static_cast<int64_t>(NumberOr(schema, "minItems", 0)), 0, 256);
  const int64_t max_items = std::max<int64_t>(0, static_cast<int64_t>(NumberOr(schema, "maxItems", 0)));
  int64_t lo = has_min ? min_items : lean ? 0 : 1;
  if (tuple && !lean) lo = std::max<int64_t>(lo, static_cast<int64_t>(items_it->size()));
  if (has_max) lo = std::min(lo, std::max(max_items, min_items));
  const int64_t hi = has_max ? std::max(lo, max_items) : lo + 1;
  int64_t count = count_hint >= 0 ? std::clamp(count_hint, lo, hi)
                  : lean          ? lo
                                  : g.rng->Range(lo, std::min(hi, lo + 2));
  count = std::min<int64_t>(count, std::max<int64_t>(lo, 16));
  const std::string item_type = SchemaType(items);
  std::optional<PropertyId> id = IdForProperty(name);
  const bool id_items =
      !tuple && id && !items.contains("enum") && (item_type.empty() || item_type == "string");
  if (id_items) {
    // Distinct identifiers from the conversation in random order, then synthetic ones.
    std::vector<std::string> seen;
    for (const std::string& v : g.ids.Of(id->kind)) {
      std::string part = NamePart(v, id->part);
      if (std::find(seen.begin(), seen.end(), part) == seen.end()) seen.push_back(part);
    }
    for (size_t i = seen.size(); i > 1; --i)
      std::swap(seen[i - 1], seen[static_cast<size_t>(g.rng->Below(static_cast<int64_t>(i)))]);
    if (!seen.empty() && count_hint < 0)
      count = std::max(lo, std::min<int64_t>(count, static_cast<int64_t>(seen.size())));
    for (int64_t i = 0; i < count; ++i) {
      if (i < static_cast<int64_t>(seen.size())) {
        arr.push_back(seen[static_cast<size_t>(i)]);
      } else {
        std::string v = SyntheticId(id->kind, g.rng);
        arr.push_back(NamePart(v, id->part));
      }
    }
    return arr;
  }
  auto unique_it = schema.find("uniqueItems");
  const bool unique = unique_it != schema.end() && unique_it->is_boolean() && unique_it->get<bool>();
  for (int64_t i = 0; i < count; ++i) {
    const Json& item_schema =
        !tuple ? items : i < static_cast<int64_t>(items_it->size()) ? (*items_it)[static_cast<size_t>(i)] : extra;
    Json v = ValueFor(item_schema, name, g, depth + 1, -1);
    // uniqueItems: a few more draws for a repeated element, then it is left out.
    for (int retry = 0; unique && retry < 8 && std::find(arr.begin(), arr.end(), v) != arr.end(); ++retry)
      v = ValueFor(item_schema, name, g, depth + 1, -1);
    if (unique && std::find(arr.begin(), arr.end(), v) != arr.end()) continue;
    arr.push_back(std::move(v));
  }
  return arr;
}

bool OnlyNull(const Json& schema) {
  auto t = schema.find("type");
  if (t == schema.end()) return false;
  if (t->is_string()) return *t == "null";
  return t->is_array() && !t->empty() &&
         std::all_of(t->begin(), t->end(), [](const Json& x) { return x == "null"; });
}

// One option of "anyOf"/"oneOf": never a null-only option when another
// exists; at lean depths one without "$ref" when there is one, so that
// recursive schemas end.
const Json& ChooseOption(const Json& options, const Gen& g, int depth) {
  std::vector<const Json*> plain, lean;
  for (const Json& option : options) {
    if (!option.is_object()) continue;
    if (!OnlyNull(option)) plain.push_back(&option);
    if (!option.contains("$ref")) lean.push_back(&option);
  }
  const std::vector<const Json*>& pool = depth >= kLeanDepth && !lean.empty() ? lean : plain;
  if (pool.empty()) return options.front();
  return *pool[static_cast<size_t>(g.rng->Below(static_cast<int64_t>(pool.size())))];
}

Json ValueFor(const Json& schema_in, std::string_view name, const Gen& g, int depth, int64_t count_hint) {
  const Json& schema = Resolve(schema_in, g);
  if (auto e = schema.find("enum"); e != schema.end() && e->is_array() && !e->empty())
    return (*e)[static_cast<size_t>(g.rng->Below(static_cast<int64_t>(e->size())))];
  if (auto c = schema.find("const"); c != schema.end()) return *c;
  if (depth <= kMaxDepth) {
    // allOf: every part holds, so the parts are merged into one schema.
    if (auto all = schema.find("allOf"); all != schema.end() && all->is_array()) {
      Json merged = Merge(schema, "allOf", Json::object());
      for (const Json& part : *all) merged = Merge(merged, "", Resolve(part, g));
      return ValueFor(merged, name, g, depth + 1, count_hint);
    }
    for (const char* alt : {"anyOf", "oneOf"}) {
      auto options = schema.find(alt);
      if (options == schema.end() || !options->is_array() || options->empty()) continue;
      const Json& option = Resolve(ChooseOption(*options, g, depth), g);
      return ValueFor(Merge(schema, alt, option), name, g, depth + 1, count_hint);
    }
  }
  const std::string type = ChooseType(schema, g);
  if (type == "object") return ObjectFor(schema, g, depth);
  if (type == "array") return ArrayFor(schema, name, g, depth, count_hint);
  if (type == "integer") return IntegerFor(schema, g);
  if (type == "number") return NumberFor(schema, g);
  if (type == "boolean") return g.rng->Below(2) == 1;
  if (type == "null") return nullptr;
  return StringFor(schema, name, g);
}

}  // namespace

void FoundIds::Add(IdKind kind, std::string value) {
  auto& list = by_kind[static_cast<size_t>(kind)];
  if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(std::move(value));
}

bool FoundIds::Empty() const {
  return std::all_of(by_kind.begin(), by_kind.end(), [](const auto& l) { return l.empty(); });
}

void ScanIds(std::string_view s, FoundIds* out) {
  std::vector<std::pair<size_t, size_t>> emails;
  ScanEmails(s, out, &emails);
  ScanNames(s, out);
  size_t next_email = 0;
  size_t i = 0;
  while (i < s.size()) {
    if (next_email < emails.size() && i >= emails[next_email].first) {
      i = std::max(i, emails[next_email].second);
      ++next_email;
      continue;
    }
    if (!IsWordChar(s[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && IsWordChar(s[j])) ++j;
    const std::string_view t = s.substr(i, j - i);
    if (i > 0 && s[i - 1] == '#' && t.size() == 8 && t[0] == 'W' && AllDigits(t.substr(1))) {
      out->Add(IdKind::kOrderId, "#" + std::string(t));
    } else if (AllDigits(t)) {
      // Not part of a decimal number ("12345.67") or of a longer id ("#W12345").
      const bool decimal = (i >= 2 && s[i - 1] == '.' && IsDigit(s[i - 2])) ||
                           (j + 1 < s.size() && s[j] == '.' && IsDigit(s[j + 1]));
      if (!decimal && t.size() == 10) out->Add(IdKind::kItemId, std::string(t));
      if (!decimal && t.size() == 5) out->Add(IdKind::kZip, std::string(t));
    } else if (IsPaymentMethod(t)) {
      out->Add(IdKind::kPaymentMethod, std::string(t));
    } else if (IsUserId(t)) {
      out->Add(IdKind::kUserId, std::string(t));
    } else if (IsReservationId(t)) {
      out->Add(IdKind::kReservationId, std::string(t));
    }
    i = j;
  }
}

std::optional<PropertyId> IdForProperty(std::string_view raw) {
  const std::string name = Lower(std::string(raw));
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("order_id")) return PropertyId{IdKind::kOrderId, 0};
  if (has("user_id")) return PropertyId{IdKind::kUserId, 0};
  if (has("item_id") || has("product_id")) return PropertyId{IdKind::kItemId, 0};
  if (has("payment_method") || name == "payment_id") return PropertyId{IdKind::kPaymentMethod, 0};
  if (has("email")) return PropertyId{IdKind::kEmail, 0};
  if (has("zip") || has("postal_code") || has("postcode")) return PropertyId{IdKind::kZip, 0};
  if (has("reservation_id")) return PropertyId{IdKind::kReservationId, 0};
  if (name == "first_name" || name == "firstname") return PropertyId{IdKind::kFullName, 1};
  if (name == "last_name" || name == "lastname") return PropertyId{IdKind::kFullName, 2};
  if (name == "full_name") return PropertyId{IdKind::kFullName, 0};
  return std::nullopt;
}

std::string IdValue(PropertyId id, const FoundIds& ids, SimRng* rng) {
  const std::vector<std::string>& seen = ids.Of(id.kind);
  if (seen.empty()) return NamePart(SyntheticId(id.kind, rng), id.part);
  // Usually the latest mention: the one the conversation is about now.
  const size_t pick = seen.size() == 1 || rng->Uniform() < 0.6
                          ? seen.size() - 1
                          : static_cast<size_t>(rng->Below(static_cast<int64_t>(seen.size())));
  return NamePart(seen[pick], id.part);
}

Json ValueForSchema(const Json& schema, const FoundIds& ids, SimRng* rng, const FillerWords& words) {
  const bool own_words = words.words != nullptr && words.count > 0;
  const Gen g{ids, rng, schema, own_words ? words.words : kWords,
              own_words ? static_cast<int64_t>(words.count)
                        : static_cast<int64_t>(sizeof(kWords) / sizeof(kWords[0]))};
  return ValueFor(schema.is_object() ? schema : EmptySchema(), "", g, 0, -1);
}

Json ArgumentsForSchema(const Json& parameters, const FoundIds& ids, SimRng* rng) {
  if (!parameters.is_object()) return Json::object();
  Json args = ValueForSchema(parameters, ids, rng);
  return args.is_object() ? args : Json::object();
}

std::vector<std::string> ScenarioMention(const FoundIds& ids, bool first_turn, SimRng* rng) {
  std::vector<std::string> sentences;
  auto pick = [&](IdKind k) { return IdValue(PropertyId{k, 0}, ids, rng); };
  auto has = [&](IdKind k) { return !ids.Of(k).empty(); };
  if (first_turn) {
    if (has(IdKind::kFullName)) sentences.push_back("Hi, my name is " + ids.Of(IdKind::kFullName).front() + ".");
    if (has(IdKind::kZip)) sentences.push_back("My zip code is " + ids.Of(IdKind::kZip).front() + ".");
    if (has(IdKind::kEmail)) sentences.push_back("My email is " + ids.Of(IdKind::kEmail).front() + ".");
    if (has(IdKind::kUserId)) sentences.push_back("My user id is " + ids.Of(IdKind::kUserId).front() + ".");
    if (has(IdKind::kOrderId))
      sentences.push_back("I am contacting you about order " + ids.Of(IdKind::kOrderId).front() + ".");
    if (has(IdKind::kReservationId))
      sentences.push_back("My reservation is " + ids.Of(IdKind::kReservationId).front() + ".");
  } else {
    std::vector<std::string> options;
    if (has(IdKind::kOrderId)) {
      const auto& orders = ids.Of(IdKind::kOrderId);
      if (orders.size() >= 2 && rng->Below(2) == 0) {
        const size_t a = static_cast<size_t>(rng->Below(static_cast<int64_t>(orders.size())));
        const size_t b = (a + 1 + static_cast<size_t>(rng->Below(static_cast<int64_t>(orders.size()) - 1))) %
                         orders.size();
        options.push_back("The orders are " + orders[a] + " and " + orders[b] + ".");
      } else {
        options.push_back("The order id is " + pick(IdKind::kOrderId) + ".");
      }
    }
    if (has(IdKind::kFullName) && has(IdKind::kZip))
      options.push_back("I am " + pick(IdKind::kFullName) + " and my zip code is " + pick(IdKind::kZip) + ".");
    if (has(IdKind::kEmail)) options.push_back("You can find me by my email " + pick(IdKind::kEmail) + ".");
    if (has(IdKind::kUserId)) options.push_back("My user id is " + pick(IdKind::kUserId) + ".");
    if (has(IdKind::kItemId)) options.push_back("The item is " + pick(IdKind::kItemId) + ".");
    if (has(IdKind::kPaymentMethod))
      options.push_back("Please use " + pick(IdKind::kPaymentMethod) + " for the payment.");
    if (has(IdKind::kReservationId))
      options.push_back("The reservation is " + pick(IdKind::kReservationId) + ".");
    for (std::string& o : options)
      if (rng->Below(2) == 0) sentences.push_back(std::move(o));
    if (sentences.empty() && !options.empty())
      sentences.push_back(options[static_cast<size_t>(rng->Below(static_cast<int64_t>(options.size())))]);
  }
  std::vector<std::string> words;
  for (const std::string& s : sentences) {
    size_t pos = 0;
    while (pos < s.size()) {
      size_t end = s.find(' ', pos);
      if (end == std::string::npos) end = s.size();
      if (end > pos) words.push_back(s.substr(pos, end - pos));
      pos = end + 1;
    }
  }
  return words;
}

}  // namespace matrix::llm_sim
