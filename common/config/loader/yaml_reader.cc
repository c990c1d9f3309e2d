// YAML -> CNode.
#include "common/config/loader/yaml_reader.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>

namespace matrix::config::loader_internal {
namespace {

constexpr int kMaxYamlDepth = 64;
constexpr size_t kMaxYamlNodes = 200000;

bool IsPlainNull(const std::string& s) { return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL"; }

// Resolves a plain scalar by the YAML 1.2 core schema.
void ResolvePlainScalar(const std::string& s, CNode* out) {
  out->kind = CNode::Kind::kScalar;
  if (s == "true" || s == "True" || s == "TRUE") {
    out->scalar = true;
    return;
  }
  if (s == "false" || s == "False" || s == "FALSE") {
    out->scalar = false;
    return;
  }
  if (!s.empty()) {
    const char* b = s.c_str();
    char* end = nullptr;
    bool digits_only = true;
    size_t start = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    for (size_t i = start; i < s.size(); ++i) digits_only = digits_only && std::isdigit(static_cast<unsigned char>(s[i]));
    if (digits_only && start < s.size()) {
      errno = 0;
      long long v = std::strtoll(b, &end, 10);
      if (errno == 0) {
        out->scalar = static_cast<int64_t>(v);
        return;
      }
      out->scalar = std::strtod(b, nullptr);
      return;
    }
    if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
      errno = 0;
      long long v = std::strtoll(b + 2, &end, s[1] == 'x' ? 16 : 8);
      if (errno == 0 && end == b + s.size()) {
        out->scalar = static_cast<int64_t>(v);
        return;
      }
    }
    if (s == ".inf" || s == ".Inf" || s == "+.inf" || s == "-.inf" || s == "-.Inf") {
      out->scalar = s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
      return;
    }
    bool numeric_chars = true;
    bool has_digit = false;
    for (size_t i = start; i < s.size(); ++i) {
      char c = s[i];
      has_digit = has_digit || std::isdigit(static_cast<unsigned char>(c));
      numeric_chars = numeric_chars && (std::isdigit(static_cast<unsigned char>(c)) || c == '.' ||
                                        c == 'e' || c == 'E' || c == '-' || c == '+');
    }
    if (numeric_chars && has_digit) {
      errno = 0;
      double d = std::strtod(b, &end);
      if (errno == 0 && end == b + s.size()) {
        out->scalar = d;
        return;
      }
    }
  }
  out->scalar = s;
}

class YamlConverter {
 public:
  YamlConverter(const std::string& file, const std::string& text, Diag* diag)
      : file_(file), text_(text), diag_(diag) {}

  bool Convert(const YAML::Node& y, int fallback_line, const std::string& path, int depth, CNode* out) {
    if (++count_ > kMaxYamlNodes) {
      if (count_ == kMaxYamlNodes + 1) {
        diag_->Error(file_, fallback_line, path, "more than " + std::to_string(kMaxYamlNodes) +
                                                     " values (aliases expanding too far?)");
      }
      return false;
    }
    if (depth > kMaxYamlDepth) {
      diag_->Error(file_, fallback_line, path, "nested deeper than " + std::to_string(kMaxYamlDepth) + " levels");
      return false;
    }
    const YAML::Mark m = y.Mark();
    out->file = file_;
    out->line = m.is_null() || y.IsNull() ? fallback_line : m.line + 1;
    if (!m.is_null() && m.pos >= 0 && static_cast<size_t>(m.pos) < text_.size()) {
      char c = text_[static_cast<size_t>(m.pos)];
      out->block = y.IsScalar() && (c == '|' || c == '>');
    }
    if (y.IsMap() || y.IsSequence()) {
      // An alias to a map or list that is still open (`a: &x {b: *x}`) makes
      // the tree cyclic; expanding it would only stop at the node limit, with
      // an error for every copy.
      for (const YAML::Node& open : open_) {
        if (open.is(y)) {
          diag_->Error(file_, out->line, path, "an alias refers to a map or list that contains it");
          return false;
        }
      }
    }
    switch (y.Type()) {
      case YAML::NodeType::Undefined:
      case YAML::NodeType::Null:
        out->kind = CNode::Kind::kNull;
        return true;
      case YAML::NodeType::Scalar:
        return ConvertScalar(y, path, out);
      case YAML::NodeType::Sequence: {
        out->kind = CNode::Kind::kList;
        size_t i = 0;
        bool ok = true;
        OpenScope scope(this, y);
        for (const auto& item : y) {
          if (count_ > kMaxYamlNodes) return false;
          CNode c;
          ok = Convert(item, out->line, path + "[" + std::to_string(i++) + "]", depth + 1, &c) && ok;
          SetKeyLocation(&c, file_, c.line);
          out->items.push_back(std::move(c));
        }
        return ok;
      }
      case YAML::NodeType::Map: {
        OpenScope scope(this, y);
        return ConvertMap(y, path, depth, out);
      }
    }
    return true;
  }

 private:
  // Marks a map or list as open (being converted) for its lifetime.
  struct OpenScope {
    OpenScope(YamlConverter* c, const YAML::Node& n) : c_(c) { c_->open_.push_back(n); }
    ~OpenScope() { c_->open_.pop_back(); }
    YamlConverter* c_;
  };

  bool ConvertScalar(const YAML::Node& y, const std::string& path, CNode* out) {
    const std::string& s = y.Scalar();
    const std::string& tag = y.Tag();
    out->kind = CNode::Kind::kScalar;
    if (tag == "?") {
      if (IsPlainNull(s)) {
        out->kind = CNode::Kind::kNull;
      } else {
        ResolvePlainScalar(s, out);
      }
      return true;
    }
    if (tag == "!" || tag == "tag:yaml.org,2002:str") {
      out->scalar = s;
      return true;
    }
    CNode typed;
    ResolvePlainScalar(s, &typed);
    const Json& v = typed.scalar;
    bool ok = (tag == "tag:yaml.org,2002:int" && v.is_number_integer()) ||
              (tag == "tag:yaml.org,2002:float" && v.is_number()) ||
              (tag == "tag:yaml.org,2002:bool" && v.is_boolean());
    if (tag == "tag:yaml.org,2002:null" && IsPlainNull(s)) {
      out->kind = CNode::Kind::kNull;
      return true;
    }
    if (!ok) {
      diag_->Error(file_, out->line, path, "unsupported tag '" + tag + "' on '" + s + "'");
      return false;
    }
    out->scalar = tag == "tag:yaml.org,2002:float" ? Json(v.get<double>()) : v;
    return true;
  }

  bool ConvertMap(const YAML::Node& y, const std::string& path, int depth, CNode* out) {
    out->kind = CNode::Kind::kMap;
    bool ok = true;
    std::vector<CNode> merges;
    for (auto it = y.begin(); it != y.end(); ++it) {
      if (count_ > kMaxYamlNodes) return false;
      // The iterator yields a temporary pair: copy the node handles out of it.
      const YAML::Node k = it->first;
      const YAML::Node v = it->second;
      int key_line = k.Mark().is_null() ? out->line : k.Mark().line + 1;
      if (!k.IsScalar()) {
        diag_->Error(file_, key_line, path, "map keys must be plain strings");
        ok = false;
        continue;
      }
      std::string key = k.Scalar();
      CNode value;
      ok = Convert(v, key_line, Join(path, key), depth + 1, &value) && ok;
      SetKeyLocation(&value, file_, key_line);
      if (key == "<<" && k.Tag() == "?") {
        merges.push_back(std::move(value));
        continue;
      }
      if (const CEntry* prev = out->FindEntry(key)) {
        diag_->Error(file_, key_line, Join(path, key),
                     "duplicate key (first on line " + std::to_string(prev->value.key_line) + ")");
        ok = false;
        continue;
      }
      out->entries.push_back(CEntry{key, std::move(value)});
    }
    // YAML merge keys: entries of the merged maps that this map does not set.
    for (auto& m : merges) {
      std::vector<CNode*> sources;
      if (m.kind == CNode::Kind::kMap) sources.push_back(&m);
      if (m.kind == CNode::Kind::kList) {
        for (auto& i : m.items) sources.push_back(&i);
      }
      for (CNode* src : sources) {
        if (src->kind != CNode::Kind::kMap) {
          diag_->At(*src, Join(path, "<<"), "a merge key ('<<') needs a map or a list of maps");
          ok = false;
          continue;
        }
        for (auto& e : src->entries) {
          if (!out->FindEntry(e.key)) out->entries.push_back(e);
        }
      }
    }
    return ok;
  }

  const std::string& file_;
  const std::string& text_;
  Diag* diag_;
  size_t count_ = 0;
  std::vector<YAML::Node> open_;  // maps and lists being converted, outermost first
};

}  // namespace

bool ParseYaml(const std::string& text, const std::string& file, const std::string& key, Diag* diag,
               CNode* out) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    int line = e.mark.is_null() ? 0 : e.mark.line + 1;
    if (file == kCommandLine) line = 0;
    diag->Error(file, line, key, "invalid YAML: " + e.msg);
    return false;
  } catch (const std::exception& e) {
    diag->Error(file, 0, key, std::string("invalid YAML: ") + e.what());
    return false;
  }
  try {
    YamlConverter conv(file, text, diag);
    bool ok = conv.Convert(root, file == kCommandLine ? 0 : 1, key, 0, out);
    if (file == kCommandLine) {
      std::function<void(CNode*)> clear = [&](CNode* n) {
        n->line = 0;
        n->key_line = 0;
        for (auto& e : n->entries) clear(&e.value);
        for (auto& i : n->items) clear(&i);
      };
      clear(out);
    }
    return ok;
  } catch (const YAML::Exception& e) {
    diag->Error(file, e.mark.is_null() ? 0 : e.mark.line + 1, key, "invalid YAML: " + e.msg);
    return false;
  }
}

}  // namespace matrix::config::loader_internal
