// CNode lookups and descriptions, and the helpers that name keys in messages.
#include "common/config/loader/config_tree.h"

#include <algorithm>
#include <cctype>

#include "common/config/expr.h"

namespace matrix::config::loader_internal {

CEntry* CNode::FindEntry(std::string_view key) {
  for (auto& e : entries) {
    if (e.key == key) return &e;
  }
  return nullptr;
}
const CEntry* CNode::FindEntry(std::string_view key) const {
  for (const auto& e : entries) {
    if (e.key == key) return &e;
  }
  return nullptr;
}
CNode* CNode::Find(std::string_view key) {
  CEntry* e = FindEntry(key);
  return e ? &e->value : nullptr;
}
const CNode* CNode::Find(std::string_view key) const {
  const CEntry* e = FindEntry(key);
  return e ? &e->value : nullptr;
}

const char* KindName(const CNode& n) {
  switch (n.kind) {
    case CNode::Kind::kNull: return "null";
    case CNode::Kind::kMap: return "a map";
    case CNode::Kind::kList: return "a list";
    case CNode::Kind::kScalar:
      if (n.scalar.is_string()) return "a string";
      if (n.scalar.is_boolean()) return "a boolean";
      if (n.scalar.is_number_integer()) return "an integer";
      return "a number";
  }
  return "a value";
}

std::string Describe(const CNode& n) {
  std::string s = KindName(n);
  if (n.kind == CNode::Kind::kScalar) {
    std::string v = ToDisplayString(n.scalar);
    if (v.size() > 40) v = v.substr(0, 40) + "...";
    s += " '" + v + "'";
  }
  return s;
}

Json ToJson(const CNode& n) {
  switch (n.kind) {
    case CNode::Kind::kNull: return Json();
    case CNode::Kind::kScalar: return n.scalar;
    case CNode::Kind::kList: {
      Json out = Json::array();
      for (const auto& i : n.items) out.push_back(ToJson(i));
      return out;
    }
    case CNode::Kind::kMap: {
      Json out = Json::object();
      for (const auto& e : n.entries) out[e.key] = ToJson(e.value);
      return out;
    }
  }
  return Json();
}

void SetKeyLocation(CNode* n, const std::string& file, int line) {
  n->key_file = file;
  n->key_line = line;
}

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

namespace {

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::string Suggest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = EditDistance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

std::vector<std::string> SplitPath(const std::string& s) {
  std::vector<std::string> parts;
  size_t b = 0;
  while (true) {
    size_t d = s.find('.', b);
    parts.push_back(s.substr(b, d == std::string::npos ? std::string::npos : d - b));
    if (d == std::string::npos) break;
    b = d + 1;
  }
  return parts;
}

bool IsIndex(const std::string& s) {
  return !s.empty() && s.size() < 9 && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

std::vector<std::string> KeysOf(const CNode& n) {
  std::vector<std::string> out;
  for (const auto& e : n.entries) out.push_back(e.key);
  return out;
}

}  // namespace matrix::config::loader_internal
