// Pipeline loading in five passes over a location-carrying tree (CNode):
//   1. read each YAML file with yaml-cpp and convert it, keeping file and line
//      of every key and value;
//   2. compose `defaults` (deep merge of maps, everything else replaced);
//   3. apply command-line overrides;
//   4. resolve ${...} interpolation against the composed tree;
//   5. check and compile it into a Pipeline, collecting every error.
// yaml-cpp exceptions are caught here and never leave this file.
// Thread-safety: no shared state; each call builds its own tree.
#include "common/config/pipeline_loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "common/base/log.h"

namespace matrix::config {

namespace fs = std::filesystem;

std::string ConfigError::ToString() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line);
  if (!key.empty()) out += (out.empty() ? "" : ": ") + key;
  out += (out.empty() ? "" : ": ") + (warning ? "warning: " + message : message);
  return out;
}

namespace {

constexpr char kCommandLine[] = "<command line>";
constexpr int kMaxYamlDepth = 64;
constexpr size_t kMaxYamlNodes = 200000;
constexpr size_t kMaxConfigFileBytes = 8 * 1024 * 1024;
constexpr int kMaxDefaultsDepth = 32;

// ---------------------------------------------------------------------------
// Location-carrying tree

struct CEntry;

// Invariants: kScalar holds a string, number or boolean in `scalar`; kMap uses
// `entries` (unique keys, file order); kList uses `items`.
struct CNode {
  enum class Kind { kNull, kScalar, kMap, kList } kind = Kind::kNull;
  Json scalar;
  bool block = false;     // a | or > block scalar: its text starts on the next line
  bool resolved = false;  // interpolation already applied
  std::vector<CEntry> entries;
  std::vector<CNode> items;
  std::string file;      // where the value is written
  int line = 0;          // 1-based; 0 for values from the command line
  std::string key_file;  // where the key that holds this value is written
  int key_line = 0;

  bool IsString() const { return kind == Kind::kScalar && scalar.is_string(); }
  const std::string& str() const { return scalar.get_ref<const std::string&>(); }
  CEntry* FindEntry(std::string_view key);
  const CEntry* FindEntry(std::string_view key) const;
  CNode* Find(std::string_view key);
  const CNode* Find(std::string_view key) const;
};

struct CEntry {
  std::string key;
  CNode value;
};

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

// Records where the key holding `n` is written.
void SetKeyLocation(CNode* n, const std::string& file, int line) {
  n->key_file = file;
  n->key_line = line;
}

// ---------------------------------------------------------------------------
// Diagnostics

class Diag {
 public:
  void Error(const std::string& file, int line, const std::string& key, const std::string& msg) {
    errors_.push_back(ConfigError{file, line, key, msg, false});
  }
  void Warn(const std::string& file, int line, const std::string& key, const std::string& msg) {
    warnings_.push_back(ConfigError{file, line, key, msg, true});
  }
  // At the value (falling back to its key).
  void At(const CNode& n, const std::string& key, const std::string& msg) {
    if (n.line > 0 || n.key_line == 0) {
      Error(n.file.empty() ? n.key_file : n.file, n.line, key, msg);
    } else {
      Error(n.key_file, n.key_line, key, msg);
    }
  }
  // At the key that holds the value (falling back to the value).
  void AtKey(const CNode& n, const std::string& key, const std::string& msg) {
    if (n.key_line > 0 || n.line == 0) {
      Error(n.key_file.empty() ? n.file : n.key_file, n.key_line, key, msg);
    } else {
      Error(n.file, n.line, key, msg);
    }
  }
  void WarnAtKey(const CNode& n, const std::string& key, const std::string& msg) {
    Warn(n.key_file.empty() ? n.file : n.key_file, n.key_line > 0 ? n.key_line : n.line, key, msg);
  }

  bool has_errors() const { return !errors_.empty(); }
  std::vector<ConfigError>& errors() { return errors_; }
  std::vector<ConfigError>& warnings() { return warnings_; }

 private:
  std::vector<ConfigError> errors_;
  std::vector<ConfigError> warnings_;
};

std::string Join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

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

// " (did you mean 'x'?)" for the closest candidate, or "".
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

// ---------------------------------------------------------------------------
// Schema: the keys each section knows.

const std::vector<std::string> kTopKeys = {"name", "description", "params", "simulator", "dataset",
                                           "run", "models", "roles", "flow"};
const std::vector<std::string> kDatasetKeys = {"path", "limit", "partitions", "id_field",
                                               "required_fields"};
const std::vector<std::string> kRunKeys = {"max_concurrent_tasks", "schedule", "trials", "max_attempts",
                                           "offload_threshold_bytes", "output_dir", "workers",
                                           "task_timeout_s", "seed"};
const std::vector<std::string> kModelKeys = {"endpoints", "model", "api_key_env", "api_key_file",
                                             "max_concurrency_per_endpoint", "timeout_s",
                                             "outage_s", "patience_factor", "max_retries", "requests_per_s", "sticky", "sampling",
                                             "price"};
const std::vector<std::string> kPriceKeys = {"input_per_million", "output_per_million", "currency"};
const std::vector<std::string> kRoleCommonKeys = {"type", "concurrency"};
const std::vector<std::pair<RoleType, std::vector<std::string>>> kRoleTypeKeys = {
    {RoleType::kLlm, {"model", "system", "prompt", "conversation", "sampling", "tools", "tools_from", "tool_choice"}},
    {RoleType::kExtract, {"from", "regex", "json", "fields", "var", "ignore_case"}},
    {RoleType::kCompare, {"left", "right", "var", "ignore_case"}},
    {RoleType::kFilter, {"condition"}},
    {RoleType::kTool, {"command", "sandbox", "image", "timeout_s", "network", "memory_mb", "cpu_s", "max_processes",
                       "max_file_mb", "max_sessions", "max_tool_calls", "idle_timeout_s", "environment"}},
    {RoleType::kExec, {"command", "sandbox", "image", "timeout_s", "network", "memory_mb", "cpu_s", "max_processes",
                       "max_file_mb", "input", "var", "environment"}},
    {RoleType::kReward, {"expr", "var", "env", "agent", "termination"}},
    {RoleType::kNoop, {}},
    {RoleType::kMessage, {"content", "as"}},
};
const std::vector<std::string> kFlowKeys = {"start", "max_steps", "max_tokens", "steps"};
const std::vector<std::string> kStepKeys = {"role", "next", "fanout", "set"};
const std::vector<std::string> kRuleKeys = {"if", "goto", "reason"};
const std::vector<std::string> kFanoutKeys = {"branches", "count",  "branch", "join", "first",
                                               "deadline_s", "value", "score", "combine", "var"};

std::vector<std::string> AllRoleKeys() {
  std::vector<std::string> out = kRoleCommonKeys;
  for (const auto& [type, keys] : kRoleTypeKeys) {
    for (const auto& k : keys) {
      if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
    }
  }
  return out;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Whether the format knows the key at `parts` (a dotted path split up), so an
// override may create it without '+'. Free-form maps (params, sampling, set)
// accept any key.
bool SchemaKnows(const std::vector<std::string>& parts) {
  const size_t n = parts.size();
  if (n == 0) return false;
  const std::string& top = parts[0];
  if (n == 1) return Contains(kTopKeys, top);
  if (top == "params" || top == "simulator") return true;
  if (top == "dataset") return n == 2 && Contains(kDatasetKeys, parts[1]);
  if (top == "run") return n == 2 && Contains(kRunKeys, parts[1]);
  if (top == "models") {
    if (n == 3) return Contains(kModelKeys, parts[2]);
    if (n == 4 && parts[2] == "price") return Contains(kPriceKeys, parts[3]);
    return n >= 4 && parts[2] == "sampling";
  }
  if (top == "roles") {
    if (n == 3) return Contains(AllRoleKeys(), parts[2]);
    return n >= 4 && (parts[2] == "sampling" || parts[2] == "fields" || parts[2] == "environment");
  }
  if (top == "flow") {
    if (n == 2) return Contains(kFlowKeys, parts[1]);
    if (parts[1] != "steps") return false;
    if (n == 4) return Contains(kStepKeys, parts[3]);
    if (n == 5 && parts[3] == "fanout") return Contains(kFanoutKeys, parts[4]);
    return n == 5 && parts[3] == "set";
  }
  return false;
}

// ---------------------------------------------------------------------------
// YAML -> CNode

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

// Parses YAML text into a tree. `file`/`line` locate errors; for command-line
// values, line is 0.
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

// ---------------------------------------------------------------------------
// Composition

void Merge(CNode* base, CNode&& overlay) {
  if (base->kind == CNode::Kind::kMap && overlay.kind == CNode::Kind::kMap) {
    for (auto& e : overlay.entries) {
      CEntry* mine = base->FindEntry(e.key);
      if (mine == nullptr) {
        base->entries.push_back(std::move(e));
      } else if (mine->value.kind == CNode::Kind::kMap && e.value.kind == CNode::Kind::kMap) {
        mine->value.key_file = e.value.key_file;
        mine->value.key_line = e.value.key_line;
        Merge(&mine->value, std::move(e.value));
      } else {
        mine->value = std::move(e.value);
      }
    }
    return;
  }
  std::string key_file = base->key_file;
  int key_line = base->key_line;
  *base = std::move(overlay);
  if (base->key_line == 0 && key_line != 0) {
    base->key_file = key_file;
    base->key_line = key_line;
  }
}

std::string ExpandHome(const std::string& p) {
  if (p.size() >= 1 && p[0] == '~' && (p.size() == 1 || p[1] == '/')) {
    const char* home = std::getenv("HOME");
    if (home != nullptr) return std::string(home) + p.substr(1);
  }
  return p;
}

// `p` relative to the folder of `file` (or to the working directory for values
// from the command line), made absolute and normalized.
std::string ResolvePath(const std::string& p, const std::string& file) {
  fs::path path(ExpandHome(p));
  std::error_code ec;
  if (!path.is_absolute()) {
    fs::path base;
    if (file.empty() || file == kCommandLine) {
      base = fs::current_path(ec);
    } else {
      base = fs::absolute(fs::path(file), ec).parent_path();
    }
    path = base / path;
  }
  return path.lexically_normal().string();
}

class Composer {
 public:
  explicit Composer(Diag* diag) : diag_(diag) {}

  // Loads `path` with its defaults into *out. `from`/`from_line`/`from_key`
  // locate the reference for read errors (empty for the top-level file).
  bool Load(const std::string& path, const std::string& from, int from_line, const std::string& from_key,
            CNode* out) {
    std::error_code ec;
    std::string canonical = fs::weakly_canonical(fs::path(path), ec).string();
    if (ec) canonical = path;
    if (std::find(chain_.begin(), chain_.end(), canonical) != chain_.end()) {
      std::string cycle;
      for (const auto& c : chain_) cycle += c + " -> ";
      diag_->Error(from, from_line, from_key, "defaults cycle: " + cycle + canonical);
      return false;
    }
    if (static_cast<int>(chain_.size()) >= kMaxDefaultsDepth) {
      diag_->Error(from, from_line, from_key, "defaults nested deeper than " + std::to_string(kMaxDefaultsDepth));
      return false;
    }
    if (fs::is_directory(path, ec)) {
      diag_->Error(from.empty() ? path : from, from_line, from_key, "'" + path + "' is a folder, not a YAML file");
      return false;
    }
    auto text = ReadFile(path);
    if (!text.ok()) {
      diag_->Error(from.empty() ? path : from, from_line, from_key, "cannot read '" + path + "': " + text.status().message());
      return false;
    }
    if (text->size() > kMaxConfigFileBytes) {
      diag_->Error(path, 0, "", "file larger than " + std::to_string(kMaxConfigFileBytes) + " bytes");
      return false;
    }
    CNode self;
    if (!ParseYaml(*text, path, "", diag_, &self)) return false;
    if (self.kind == CNode::Kind::kNull) {
      self.kind = CNode::Kind::kMap;
    } else if (self.kind != CNode::Kind::kMap) {
      diag_->At(self, "", "the top level must be a map of keys (name, dataset, models, roles, flow...), got " +
                              std::string(KindName(self)));
      return false;
    }
    chain_.push_back(canonical);
    bool ok = ComposeDefaults(path, &self, out);
    chain_.pop_back();
    return ok;
  }

 private:
  bool ComposeDefaults(const std::string& path, CNode* self, CNode* out) {
    auto it = std::find_if(self->entries.begin(), self->entries.end(),
                           [](const CEntry& e) { return e.key == "defaults"; });
    if (it == self->entries.end()) {
      *out = std::move(*self);
      return true;
    }
    CNode defaults = std::move(it->value);
    self->entries.erase(it);
    std::vector<const CNode*> entries;
    if (defaults.kind == CNode::Kind::kList) {
      for (const auto& i : defaults.items) entries.push_back(&i);
    } else if (defaults.IsString()) {
      entries.push_back(&defaults);
    } else if (defaults.kind != CNode::Kind::kNull) {
      diag_->At(defaults, "defaults", "expected a list of file paths, got " + Describe(defaults));
      return false;
    }
    CNode acc;
    acc.kind = CNode::Kind::kMap;
    acc.file = path;
    acc.line = 1;
    bool self_merged = false;
    bool ok = true;
    for (size_t i = 0; i < entries.size(); ++i) {
      const CNode& e = *entries[i];
      std::string key = "defaults[" + std::to_string(i) + "]";
      if (!e.IsString()) {
        diag_->At(e, key, "expected a file path, got " + Describe(e));
        ok = false;
        continue;
      }
      if (e.str() == "_self_") {
        Merge(&acc, std::move(*self));
        self_merged = true;
        continue;
      }
      std::string target = ResolvePath(e.str(), path);
      std::error_code ec;
      if (fs::path(target).extension().empty() && !fs::exists(target, ec)) {
        if (fs::exists(target + ".yaml", ec)) target += ".yaml";
        else if (fs::exists(target + ".yml", ec)) target += ".yml";
      }
      CNode loaded;
      if (!Load(target, e.file, e.line, key, &loaded)) {
        ok = false;
        continue;
      }
      Merge(&acc, std::move(loaded));
    }
    if (!self_merged) Merge(&acc, std::move(*self));
    *out = std::move(acc);
    return ok;
  }

  Diag* diag_;
  std::vector<std::string> chain_;
};

// ---------------------------------------------------------------------------
// Overrides

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

// Schema keys that could follow `prefix`, for suggestions.
std::vector<std::string> SchemaCandidates(const std::vector<std::string>& prefix) {
  std::vector<std::string> out;
  std::vector<std::string> all = kTopKeys;
  for (const auto* list :
       {&kDatasetKeys, &kRunKeys, &kModelKeys, &kPriceKeys, &kFlowKeys, &kStepKeys, &kFanoutKeys}) {
    all.insert(all.end(), list->begin(), list->end());
  }
  for (const auto& k : AllRoleKeys()) all.push_back(k);
  for (const auto& k : all) {
    std::vector<std::string> p = prefix;
    p.push_back(k);
    if (SchemaKnows(p)) out.push_back(k);
  }
  return out;
}

void ApplyOverride(const std::string& text, CNode* root, Diag* diag) {
  enum class Mode { kSet, kAdd, kForce, kDelete } mode = Mode::kSet;
  std::string s = text;
  if (s.rfind("++", 0) == 0) {
    mode = Mode::kForce;
    s = s.substr(2);
  } else if (s.rfind("+", 0) == 0) {
    mode = Mode::kAdd;
    s = s.substr(1);
  } else if (s.rfind("~", 0) == 0) {
    mode = Mode::kDelete;
    s = s.substr(1);
  }
  size_t eq = s.find('=');
  if (eq == std::string::npos && mode != Mode::kDelete) {
    diag->Error(kCommandLine, 0, "", "override '" + text + "' is not of the form key.path=value");
    return;
  }
  std::string key = eq == std::string::npos ? s : s.substr(0, eq);
  std::string value_text = eq == std::string::npos ? "" : s.substr(eq + 1);
  auto parts = SplitPath(key);
  for (const auto& p : parts) {
    if (p.empty()) {
      diag->Error(kCommandLine, 0, key, "override '" + text + "' has an empty key part");
      return;
    }
  }
  if (parts[0] == "defaults") {
    diag->Error(kCommandLine, 0, key, "defaults cannot be overridden; list the files in the YAML");
    return;
  }
  CNode value;
  if (mode != Mode::kDelete) {
    if (value_text.empty()) {
      value.kind = CNode::Kind::kScalar;
      value.scalar = "";
    } else if (!ParseYaml(value_text, kCommandLine, key, diag, &value)) {
      return;
    }
    value.file = kCommandLine;
    value.key_file = kCommandLine;
  }
  std::string hint = " (override '" + text + "')";
  CNode* cur = root;
  std::vector<std::string> walked;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const bool last = i + 1 == parts.size();
    walked.push_back(part);
    const std::string walked_key = [&] {
      std::string k;
      for (const auto& w : walked) k = Join(k, w);
      return k;
    }();
    if (cur->kind == CNode::Kind::kList) {
      if (!IsIndex(part) || std::stoul(part) >= cur->items.size()) {
        diag->Error(kCommandLine, 0, walked_key, "no list element " + part + " (the list has " +
                                                    std::to_string(cur->items.size()) + ")" + hint);
        return;
      }
      CNode& item = cur->items[std::stoul(part)];
      if (!last) {
        cur = &item;
        continue;
      }
      if (mode == Mode::kDelete) {
        cur->items.erase(cur->items.begin() + static_cast<long>(std::stoul(part)));
      } else if (mode == Mode::kAdd) {
        diag->Error(kCommandLine, 0, walked_key, "already exists; drop the '+' to change it" + hint);
      } else {
        item = std::move(value);
      }
      return;
    }
    if (cur->kind == CNode::Kind::kNull) {
      cur->kind = CNode::Kind::kMap;
    }
    if (cur->kind != CNode::Kind::kMap) {
      std::vector<std::string> parent(walked.begin(), walked.end() - 1);
      std::string pk;
      for (const auto& w : parent) pk = Join(pk, w);
      diag->Error(kCommandLine, 0, walked_key, "'" + pk + "' is " + KindName(*cur) + ", not a map" + hint);
      return;
    }
    CEntry* e = cur->FindEntry(part);
    if (e == nullptr) {
      if (mode == Mode::kDelete) {
        diag->Error(kCommandLine, 0, key, "no such key to remove" + hint);
        return;
      }
      if (mode == Mode::kSet && !SchemaKnows(walked)) {
        std::vector<std::string> prefix(walked.begin(), walked.end() - 1);
        std::vector<std::string> cands = KeysOf(*cur);
        for (const auto& c : SchemaCandidates(prefix)) cands.push_back(c);
        diag->Error(kCommandLine, 0, walked_key,
                    "unknown key" + Suggest(part, cands) + "; use '+" + key + "=...' to add a new key" + hint);
        return;
      }
      CNode fresh;
      fresh.kind = CNode::Kind::kMap;
      fresh.file = kCommandLine;
      fresh.key_file = kCommandLine;
      cur->entries.push_back(CEntry{part, std::move(fresh)});
      e = &cur->entries.back();
      if (last) {
        e->value = std::move(value);
        return;
      }
      cur = &e->value;
      continue;
    }
    if (!last) {
      cur = &e->value;
      continue;
    }
    if (mode == Mode::kDelete) {
      cur->entries.erase(cur->entries.begin() + (e - cur->entries.data()));
    } else if (mode == Mode::kAdd) {
      diag->Error(kCommandLine, 0, walked_key, "already exists; drop the '+' to change it" + hint);
    } else {
      e->value = std::move(value);
    }
    return;
  }
}

// ---------------------------------------------------------------------------
// Interpolation

class Interpolator {
 public:
  Interpolator(CNode* root, Diag* diag) : root_(root), diag_(diag) {}

  void Run() { ResolveTree(root_, ""); }

 private:
  // Resolves every string under `n`.
  bool ResolveTree(CNode* n, const std::string& path) {
    if (std::find(stack_.begin(), stack_.end(), n) != stack_.end()) {
      return Cycle(n, path);
    }
    if (n->IsString()) return ResolveString(n, path);
    bool ok = true;
    stack_.push_back(n);
    stack_paths_.push_back(path);
    if (n->kind == CNode::Kind::kMap) {
      for (size_t i = 0; i < n->entries.size(); ++i) {
        ok = ResolveTree(&n->entries[i].value, Join(path, n->entries[i].key)) && ok;
      }
    } else if (n->kind == CNode::Kind::kList) {
      for (size_t i = 0; i < n->items.size(); ++i) {
        ok = ResolveTree(&n->items[i], path + "." + std::to_string(i)) && ok;
      }
    }
    stack_.pop_back();
    stack_paths_.pop_back();
    return ok;
  }

  bool Cycle(const CNode* n, const std::string& path) {
    std::string chain;
    bool in = false;
    for (size_t i = 0; i < stack_.size(); ++i) {
      if (stack_[i] == n) in = true;
      if (in) chain += (stack_paths_[i].empty() ? "<root>" : stack_paths_[i]) + " -> ";
    }
    diag_->At(*n, path, "interpolation cycle: " + chain + path);
    return false;
  }

  // The node at a dotted path, resolving strings met on the way.
  CNode* Lookup(const std::string& ref, std::string* why) {
    CNode* cur = root_;
    std::string walked;
    for (const auto& part : SplitPath(ref)) {
      if (cur->IsString() && !cur->resolved && !ResolveString(cur, walked)) {
        *why = "'" + walked + "' could not be resolved";
        return nullptr;
      }
      if (cur->kind == CNode::Kind::kMap) {
        CNode* next = cur->Find(part);
        if (next == nullptr) {
          *why = "no key '" + Join(walked, part) + "'" + Suggest(part, KeysOf(*cur));
          return nullptr;
        }
        cur = next;
      } else if (cur->kind == CNode::Kind::kList && IsIndex(part) && std::stoul(part) < cur->items.size()) {
        cur = &cur->items[std::stoul(part)];
      } else {
        *why = "no key '" + Join(walked, part) + "' ('" + (walked.empty() ? "<root>" : walked) + "' is " +
               KindName(*cur) + ")";
        return nullptr;
      }
      walked = Join(walked, part);
    }
    return cur;
  }

  static std::string AsText(const CNode& n) {
    if (n.kind == CNode::Kind::kNull) return "null";
    if (n.kind == CNode::Kind::kScalar) return ToDisplayString(n.scalar);
    return DumpJson(ToJson(n));
  }

  bool ResolveString(CNode* n, const std::string& path) {
    if (n->resolved || !n->IsString()) return true;
    if (std::find(stack_.begin(), stack_.end(), n) != stack_.end()) return Cycle(n, path);
    const std::string s = n->str();
    if (s.find("${") == std::string::npos) {
      n->resolved = true;
      return true;
    }
    stack_.push_back(n);
    stack_paths_.push_back(path);
    std::string out;
    bool ok = true;
    bool whole = false;
    CNode whole_value;
    size_t i = 0;
    while (i < s.size()) {
      if (s[i] == '\\' && s.compare(i + 1, 2, "${") == 0) {
        out += "${";
        i += 3;
        continue;
      }
      if (s.compare(i, 2, "${") != 0) {
        out.push_back(s[i++]);
        continue;
      }
      size_t close = s.find('}', i + 2);
      if (close == std::string::npos) {
        diag_->At(*n, path, "unterminated '${' in '" + s + "'");
        ok = false;
        break;
      }
      std::string ref = s.substr(i + 2, close - i - 2);
      ref.erase(0, ref.find_first_not_of(" \t"));
      ref.erase(ref.find_last_not_of(" \t") + 1);
      bool alone = i == 0 && close + 1 == s.size();
      if (ref.rfind("env:", 0) == 0 || ref.rfind("oc.env:", 0) == 0) {
        std::string spec = ref.substr(ref.find(':') + 1);
        std::optional<std::string> dflt;
        size_t comma = spec.find(',');
        if (comma != std::string::npos) {
          dflt = spec.substr(comma + 1);
          spec = spec.substr(0, comma);
        }
        const char* v = std::getenv(spec.c_str());
        if (v == nullptr && !dflt) {
          diag_->At(*n, path, "environment variable '" + spec + "' is not set (in '${" + ref + "}')");
          ok = false;
        } else {
          out += v != nullptr ? std::string(v) : *dflt;
        }
      } else if (ref.empty()) {
        diag_->At(*n, path, "empty '${}'");
        ok = false;
      } else {
        std::string why;
        CNode* target = Lookup(ref, &why);
        if (target == nullptr) {
          diag_->At(*n, path, "cannot resolve '${" + ref + "}': " + why);
          ok = false;
        } else if (!ResolveTree(target, ref)) {
          ok = false;
        } else if (alone) {
          whole = true;
          whole_value = *target;
        } else {
          out += AsText(*target);
        }
      }
      i = close + 1;
    }
    stack_.pop_back();
    stack_paths_.pop_back();
    if (!ok) {
      n->resolved = true;
      return false;
    }
    if (whole) {
      std::string key_file = n->key_file;
      int key_line = n->key_line;
      std::string file = n->file;
      int line = n->line;
      *n = std::move(whole_value);
      n->key_file = key_file;
      n->key_line = key_line;
      if (!n->IsString()) {
        // Type errors about the value point at the reference.
        n->file = file;
        n->line = line;
        n->block = false;
      }
    } else {
      n->scalar = out;
    }
    n->resolved = true;
    return true;
  }

  CNode* root_;
  Diag* diag_;
  std::vector<const CNode*> stack_;  // nodes being resolved, outermost first
  std::vector<std::string> stack_paths_;
};

// ---------------------------------------------------------------------------
// Validation and compilation

class Builder {
 public:
  Builder(const std::string& top_file, Diag* diag, const LoadOptions& options)
      : top_file_(top_file), diag_(diag), options_(options) {}

  void Build(CNode* root, Pipeline* p) {
    CheckKeys(*root, "", kTopKeys, "top-level");
    BuildName(*root, p);
    if (Section(*root, "dataset", true) != nullptr) BuildDataset(root->Find("dataset"), p);
    if (const CNode* r = Section(*root, "run", false)) BuildRun(*r, p);
    if (p->run.output_dir.empty()) p->run.output_dir = "runs/" + p->name;
    if (const CNode* d = root->Find("description")) {
      if (d->IsString()) p->description = d->str();
      else if (d->kind != CNode::Kind::kNull) diag_->At(*d, "description", "expected a string, got " + Describe(*d));
    }
    for (const char* free_form : {"params", "simulator"}) {
      const CNode* m = root->Find(free_form);
      if (m != nullptr && m->kind != CNode::Kind::kMap && m->kind != CNode::Kind::kNull) {
        diag_->At(*m, free_form, "expected a map, got " + Describe(*m));
      }
    }
    if (CNode* m = root->Find("models")) BuildModels(m, p);
    if (const CNode* r = root->Find("roles")) BuildRoles(*r, p);
    else diag_->Error(top_file_, 0, "roles", "missing 'roles'");
    if (const CNode* f = Section(*root, "flow", true)) BuildFlow(*f, p);
    CrossCheck(*root, p);
  }

 private:
  // ---- typed access ----
  const CNode* Section(const CNode& parent, const std::string& key, bool required) {
    const CNode* n = parent.Find(key);
    if (n == nullptr || n->kind == CNode::Kind::kNull) {
      if (required) {
        if (n != nullptr) diag_->AtKey(*n, key, "must not be empty");
        else diag_->Error(top_file_, 0, key, "missing '" + key + "'");
      }
      return nullptr;
    }
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, key, "expected a map, got " + Describe(*n));
      return nullptr;
    }
    return n;
  }

  void CheckKeys(const CNode& map, const std::string& path, const std::vector<std::string>& known,
                 const std::string& what) {
    for (const auto& e : map.entries) {
      if (!Contains(known, e.key)) {
        diag_->AtKey(e.value, Join(path, e.key), "unknown " + what + " key" + Suggest(e.key, known));
      }
    }
  }

  // Optional value: nullptr when absent or null.
  static const CNode* Get(const CNode& map, const std::string& key) {
    const CNode* n = map.Find(key);
    return (n == nullptr || n->kind == CNode::Kind::kNull) ? nullptr : n;
  }

  void Missing(const CNode& map, const std::string& path, const std::string& key, const std::string& why = "") {
    diag_->AtKey(map, Join(path, key), "missing required key '" + key + "'" + why);
  }

  bool GetString(const CNode& map, const std::string& path, const std::string& key, std::string* out,
                 bool required = false) {
    const CNode* n = Get(map, key);
    if (n == nullptr) {
      if (required) Missing(map, path, key);
      return false;
    }
    if (!n->IsString()) {
      diag_->At(*n, Join(path, key), "expected a string, got " + Describe(*n));
      return false;
    }
    *out = n->str();
    if (required && out->empty()) {
      diag_->At(*n, Join(path, key), "must not be empty");
      return false;
    }
    return true;
  }

  template <typename T>
  void GetInt(const CNode& map, const std::string& path, const std::string& key, T* out, int64_t min,
              int64_t max = std::numeric_limits<int32_t>::max()) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kScalar || !n->scalar.is_number_integer()) {
      diag_->At(*n, Join(path, key), "expected an integer, got " + Describe(*n));
      return;
    }
    int64_t v = n->scalar.get<int64_t>();
    if (v < min || v > max) {
      std::string range = min == 1 ? "a positive integer" : min == 0 ? "zero or a positive integer" : "at least " + std::to_string(min);
      if (v > max) range = "at most " + std::to_string(max);
      diag_->At(*n, Join(path, key), "must be " + range + ", got " + std::to_string(v));
      return;
    }
    *out = static_cast<T>(v);
  }

  void GetDouble(const CNode& map, const std::string& path, const std::string& key, double* out,
                 bool allow_zero) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kScalar || !n->scalar.is_number()) {
      diag_->At(*n, Join(path, key), "expected a number, got " + Describe(*n));
      return;
    }
    double v = n->scalar.get<double>();
    if (!(v > 0 || (allow_zero && v == 0)) || !std::isfinite(v)) {
      diag_->At(*n, Join(path, key), std::string("must be a ") + (allow_zero ? "non-negative" : "positive") +
                                         " number, got " + ToDisplayString(n->scalar));
      return;
    }
    *out = v;
  }

  void GetBool(const CNode& map, const std::string& path, const std::string& key, bool* out) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kScalar || !n->scalar.is_boolean()) {
      diag_->At(*n, Join(path, key), "expected true or false, got " + Describe(*n));
      return;
    }
    *out = n->scalar.get<bool>();
  }

  // A list of strings; a single string counts as a list of one.
  bool GetStringList(const CNode& map, const std::string& path, const std::string& key,
                     std::vector<std::string>* out) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return false;
    if (n->IsString()) {
      out->push_back(n->str());
      return true;
    }
    if (n->kind != CNode::Kind::kList) {
      diag_->At(*n, Join(path, key), "expected a list of strings, got " + Describe(*n));
      return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n->items.size(); ++i) {
      const CNode& item = n->items[i];
      if (!item.IsString()) {
        diag_->At(item, Join(path, key) + "[" + std::to_string(i) + "]", "expected a string, got " + Describe(item));
        ok = false;
        continue;
      }
      out->push_back(item.str());
    }
    return ok;
  }

  void GetMap(const CNode& map, const std::string& path, const std::string& key, Json* out) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, Join(path, key), "expected a map, got " + Describe(*n));
      return;
    }
    *out = ToJson(*n);
  }

  // Expression text from a string (or a boolean / number written bare).
  std::optional<Expr> GetExpr(const CNode& map, const std::string& path, const std::string& key, bool required) {
    const CNode* n = Get(map, key);
    if (n == nullptr) {
      if (required) Missing(map, path, key);
      return std::nullopt;
    }
    return CompileExpr(*n, Join(path, key));
  }

  std::optional<Expr> CompileExpr(const CNode& n, const std::string& key) {
    std::string text;
    if (n.IsString()) {
      text = n.str();
    } else if (n.kind == CNode::Kind::kScalar) {
      text = DumpJson(n.scalar);
    } else {
      diag_->At(n, key, "expected an expression (a string), got " + Describe(n));
      return std::nullopt;
    }
    auto e = Expr::Parse(text);
    if (!e.ok()) {
      diag_->At(n, key, "invalid expression '" + text + "': " + e.status().message());
      return std::nullopt;
    }
    return std::move(e).value();
  }

  std::optional<Template> GetTemplate(const CNode& map, const std::string& path, const std::string& key) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return std::nullopt;
    const std::string full = Join(path, key);
    if (!n->IsString()) {
      diag_->At(*n, full, "expected a template string, got " + Describe(*n));
      return std::nullopt;
    }
    int tline = 0;
    auto t = Template::ParseWithLine(n->str(), full, &tline);
    if (!t.ok()) {
      std::string msg = t.status().message();
      std::string prefix = full + ":" + std::to_string(tline) + ": ";
      if (msg.rfind(prefix, 0) == 0) msg = msg.substr(prefix.size());
      int line = n->line;
      if (line > 0 && tline > 0) line += (n->block ? 1 : 0) + tline - 1;
      diag_->Error(n->file, line, full, "template line " + std::to_string(tline) + ": " + msg);
      return std::nullopt;
    }
    return std::move(t).value();
  }

  // ---- sections ----
  void BuildName(const CNode& root, Pipeline* p) {
    const CNode* n = Get(root, "name");
    if (n == nullptr) {
      p->name = fs::path(top_file_).stem().string();
      return;
    }
    if (!n->IsString() && !(n->kind == CNode::Kind::kScalar && n->scalar.is_number_integer())) {
      diag_->At(*n, "name", "expected a string, got " + Describe(*n));
      return;
    }
    p->name = ToDisplayString(n->scalar);
    bool ok = !p->name.empty() && std::all_of(p->name.begin(), p->name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
    });
    if (!ok) diag_->At(*n, "name", "must be non-empty and use only letters, digits, '_', '-' and '.'");
  }

  void BuildDataset(CNode* d, Pipeline* p) {
    const std::string path = "dataset";
    CheckKeys(*d, path, kDatasetKeys, "dataset");
    DatasetConfig& ds = p->dataset;
    std::string raw;
    if (GetString(*d, path, "path", &raw, true)) {
      CNode* n = d->Find("path");
      ds.path = ResolvePath(raw, n->file);
      n->scalar = ds.path;
      std::error_code ec;
      if (!fs::exists(ds.path, ec)) diag_->At(*n, "dataset.path", "dataset '" + ds.path + "' does not exist");
    }
    GetInt(*d, path, "limit", &ds.limit, 0, std::numeric_limits<int64_t>::max());
    GetInt(*d, path, "partitions", &ds.partitions, 1, 1000000);
    GetString(*d, path, "id_field", &ds.id_field);
    GetStringList(*d, path, "required_fields", &ds.required_fields);
  }

  void BuildRun(const CNode& r, Pipeline* p) {
    const std::string path = "run";
    CheckKeys(r, path, kRunKeys, "run");
    RunConfig& run = p->run;
    GetInt(r, path, "max_concurrent_tasks", &run.max_concurrent_tasks, 1);
    GetInt(r, path, "trials", &run.trials, 1);
    GetInt(r, path, "max_attempts", &run.max_attempts, 1);
    GetInt(r, path, "offload_threshold_bytes", &run.offload_threshold_bytes, 0, std::numeric_limits<int64_t>::max());
    GetString(r, path, "output_dir", &run.output_dir);
    GetInt(r, path, "workers", &run.workers, 1, 4096);
    GetDouble(r, path, "task_timeout_s", &run.task_timeout_s, false);
    GetInt(r, path, "seed", &run.seed, 0, std::numeric_limits<int64_t>::max());
    std::string schedule;
    if (GetString(r, path, "schedule", &schedule)) {
      if (schedule == "row") {
        run.schedule = RunConfig::Schedule::kRow;
      } else if (schedule == "batch") {
        run.schedule = RunConfig::Schedule::kBatch;
      } else {
        diag_->AtKey(*Get(r, "schedule"), Join(path, "schedule"), "must be 'row' or 'batch', not '" + schedule + "'");
      }
    }
  }

  void BuildModels(CNode* models, Pipeline* p) {
    if (models->kind == CNode::Kind::kNull) return;
    if (models->kind != CNode::Kind::kMap) {
      diag_->At(*models, "models", "expected a map of model names, got " + Describe(*models));
      return;
    }
    for (auto& e : models->entries) {
      const std::string path = "models." + e.key;
      CNode& m = e.value;
      if (m.kind != CNode::Kind::kMap) {
        diag_->At(m, path, "expected a map (endpoints, model, ...), got " + Describe(m));
        continue;
      }
      CheckKeys(m, path, kModelKeys, "model");
      ModelConfig mc;
      mc.name = e.key;
      if (!GetStringList(m, path, "endpoints", &mc.endpoints)) {
        if (Get(m, "endpoints") == nullptr) Missing(m, path, "endpoints", " (URLs, or [sim] for the simulator)");
      } else if (mc.endpoints.empty()) {
        diag_->At(*m.Find("endpoints"), path + ".endpoints", "must list at least one endpoint");
      } else {
        for (size_t i = 0; i < mc.endpoints.size(); ++i) {
          const std::string& url = mc.endpoints[i];
          bool ok = url == "sim" ? mc.endpoints.size() == 1
                                 : (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) && url.size() > 8;
          if (!ok) {
            diag_->At(*m.Find("endpoints"), path + ".endpoints",
                      url == "sim" ? "'sim' cannot be mixed with other endpoints"
                                   : "'" + url + "' is not an http:// or https:// URL (or 'sim')");
          }
        }
      }
      GetString(m, path, "model", &mc.model, true);
      GetString(m, path, "api_key_env", &mc.api_key_env);
      if (GetString(m, path, "api_key_file", &mc.api_key_file) && !mc.api_key_file.empty()) {
        CNode* n = m.Find("api_key_file");
        mc.api_key_file = ResolvePath(mc.api_key_file, n->file);
        n->scalar = mc.api_key_file;
      }
      if (!mc.api_key_env.empty() && !mc.api_key_file.empty()) {
        diag_->AtKey(m, path, "set at most one of api_key_env and api_key_file");
      }
      GetInt(m, path, "max_concurrency_per_endpoint", &mc.max_concurrency_per_endpoint, 1);
      GetDouble(m, path, "timeout_s", &mc.timeout_s, false);
      GetDouble(m, path, "outage_s", &mc.outage_s, false);
      GetDouble(m, path, "patience_factor", &mc.patience_factor, true);
      GetInt(m, path, "max_retries", &mc.max_retries, 0, 100);
      GetDouble(m, path, "requests_per_s", &mc.requests_per_s, true);
      GetBool(m, path, "sticky", &mc.sticky);
      GetMap(m, path, "sampling", &mc.sampling);
      mc.price = GetPrice(m, path);
      p->models.emplace(e.key, std::move(mc));
    }
    // One currency per pipeline: costs of different models add up.
    const ModelConfig* first = nullptr;
    for (const auto& e : models->entries) {
      auto it = p->models.find(e.key);
      if (it == p->models.end() || !it->second.price) continue;
      if (first == nullptr) {
        first = &it->second;
      } else if (it->second.price->currency != first->price->currency) {
        const CNode* price = e.value.Find("price");
        const CNode* currency = price != nullptr ? price->Find("currency") : nullptr;
        const std::string key = "models." + e.key + ".price.currency";
        const std::string msg = "'" + it->second.price->currency + "' differs from models." + first->name +
                                "'s '" + first->price->currency + "'; every priced model needs the same currency";
        if (currency != nullptr) {
          diag_->At(*currency, key, msg);
        } else {
          diag_->AtKey(*price, key, msg);
        }
      }
    }
  }

  // models.<name>.price: both prices required, non-negative numbers.
  std::optional<PriceConfig> GetPrice(const CNode& m, const std::string& model_path) {
    const CNode* n = Get(m, "price");
    if (n == nullptr) return std::nullopt;
    const std::string path = model_path + ".price";
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, path,
                "expected a map {input_per_million, output_per_million, currency}, got " + Describe(*n));
      return std::nullopt;
    }
    CheckKeys(*n, path, kPriceKeys, "price");
    PriceConfig price;
    bool ok = true;
    const std::pair<const char*, double*> amounts[] = {{"input_per_million", &price.input_per_million},
                                                       {"output_per_million", &price.output_per_million}};
    for (const auto& [key, out] : amounts) {
      if (Get(*n, key) == nullptr) {
        Missing(*n, path, key, " (per million tokens; 0 when free)");
        ok = false;
        continue;
      }
      double v = -1;  // stays negative when GetDouble reports an error
      GetDouble(*n, path, key, &v, /*allow_zero=*/true);
      if (v < 0) ok = false;
      *out = v;
    }
    if (Get(*n, "currency") != nullptr) {
      if (!GetString(*n, path, "currency", &price.currency, /*required=*/true)) ok = false;
    }
    if (!ok) return std::nullopt;
    return price;
  }

  void BuildRoles(const CNode& roles, Pipeline* p) {
    if (roles.kind != CNode::Kind::kMap) {
      diag_->At(roles, "roles", "expected a map of role names, got " + Describe(roles));
      return;
    }
    if (roles.entries.empty()) diag_->AtKey(roles, "roles", "no roles defined");
    for (const auto& e : roles.entries) {
      const std::string path = "roles." + e.key;
      const CNode& r = e.value;
      if (r.kind != CNode::Kind::kMap) {
        diag_->At(r, path, "expected a map (type, ...), got " + Describe(r));
        continue;
      }
      RoleConfig rc;
      rc.name = e.key;
      BuildRole(r, path, &rc);
      // Kept even when invalid, so steps naming it report no second error.
      p->roles.emplace(e.key, std::move(rc));
    }
  }

  void BuildRole(const CNode& r, const std::string& path, RoleConfig* rc) {
    std::string type;
    if (!GetString(r, path, "type", &type, true)) return;
    static const std::vector<std::string> kTypeNames = {"llm",  "extract", "compare", "filter", "tool",
                                                        "exec", "reward",  "noop",    "message"};
    auto it = std::find(kTypeNames.begin(), kTypeNames.end(), type);
    if (it == kTypeNames.end()) {
      diag_->At(*r.Find("type"), path + ".type",
                "unknown role type '" + type + "'" + Suggest(type, kTypeNames) +
                    " (llm, extract, compare, filter, tool, exec, reward, noop, message)");
      return;
    }
    rc->type = static_cast<RoleType>(it - kTypeNames.begin());
    const std::vector<std::string>* own = nullptr;
    for (const auto& [t, keys] : kRoleTypeKeys) {
      if (t == rc->type) own = &keys;
    }
    const std::vector<std::string> all = AllRoleKeys();
    for (const auto& e : r.entries) {
      if (Contains(kRoleCommonKeys, e.key) || Contains(*own, e.key)) continue;
      if (Contains(all, e.key)) {
        diag_->AtKey(e.value, Join(path, e.key), "does not apply to roles of type " + type);
      } else {
        std::vector<std::string> cands = kRoleCommonKeys;
        cands.insert(cands.end(), own->begin(), own->end());
        diag_->AtKey(e.value, Join(path, e.key), "unknown role key" + Suggest(e.key, cands));
      }
    }
    GetInt(r, path, "concurrency", &rc->concurrency, 1, 10000000);
    switch (rc->type) {
      case RoleType::kLlm:
        GetString(r, path, "model", &rc->model, true);
        rc->system = GetTemplate(r, path, "system");
        rc->prompt = GetTemplate(r, path, "prompt");
        GetBool(r, path, "conversation", &rc->conversation);
        GetMap(r, path, "sampling", &rc->sampling);
        if (const CNode* t = Get(r, "tools")) {
          if (t->kind != CNode::Kind::kList) {
            diag_->At(*t, path + ".tools", "expected a list of tool definitions, got " + Describe(*t));
          } else {
            rc->tools = ToJson(*t);
          }
        }
        GetString(r, path, "tools_from", &rc->tools_from);
        if (const CNode* tc = Get(r, "tool_choice")) {
          if (tc->IsString() || tc->kind == CNode::Kind::kMap) rc->tool_choice = ToJson(*tc);
          else diag_->At(*tc, path + ".tool_choice", "expected auto, none, required, a tool name or a map, got " + Describe(*tc));
        }
        break;
      case RoleType::kExtract: {
        rc->from = Get(r, "from") ? GetExpr(r, path, "from", false) : Expr::Parse("last.content").value();
        GetBool(r, path, "ignore_case", &rc->ignore_case);
        GetBool(r, path, "json", &rc->json);
        GetString(r, path, "var", &rc->var);
        bool has_regex = GetString(r, path, "regex", &rc->regex_source);
        if (has_regex == rc->json) {
          diag_->AtKey(r, path, has_regex ? "set either regex or json: true, not both"
                                          : "an extract role needs regex: \"...\" or json: true");
        }
        if (has_regex) {
          auto re = CompileRegex(rc->regex_source, rc->ignore_case);
          if (!re.ok()) diag_->At(*r.Find("regex"), path + ".regex", re.status().message());
          else rc->regex = std::move(re).value();
          if (rc->var.empty()) Missing(r, path, "var", " (the variable receiving the match)");
        }
        if (const CNode* f = Get(r, "fields")) {
          if (!rc->json) diag_->AtKey(*f, path + ".fields", "fields need json: true");
          if (f->kind != CNode::Kind::kMap) {
            diag_->At(*f, path + ".fields", "expected a map of variable -> path, got " + Describe(*f));
          } else {
            for (const auto& fe : f->entries) {
              const std::string fk = path + ".fields." + fe.key;
              if (!fe.value.IsString()) {
                diag_->At(fe.value, fk, "expected a dotted path (a string), got " + Describe(fe.value));
                continue;
              }
              const std::string& jp = fe.value.str();
              bool ok = !jp.empty() && jp.front() != '.' && jp.back() != '.' && jp.find("..") == std::string::npos;
              if (!ok) diag_->At(fe.value, fk, "'" + jp + "' is not a dotted path like scores.math");
              else rc->fields.emplace(fe.key, jp);
            }
          }
        }
        if (rc->json && rc->var.empty() && rc->fields.empty() && Get(r, "fields") == nullptr) {
          Missing(r, path, "var", " (or fields) for the parsed JSON");
        }
        break;
      }
      case RoleType::kCompare:
        rc->left = GetExpr(r, path, "left", true);
        rc->right = GetExpr(r, path, "right", true);
        GetString(r, path, "var", &rc->var, true);
        GetBool(r, path, "ignore_case", &rc->ignore_case);
        break;
      case RoleType::kFilter:
        rc->condition = GetExpr(r, path, "condition", true);
        break;
      case RoleType::kTool:
      case RoleType::kExec: {
        if (!GetStringList(r, path, "command", &rc->command)) {
          if (Get(r, "command") == nullptr) Missing(r, path, "command", " (the program and its arguments)");
        } else if (rc->command.empty() || rc->command[0].empty()) {
          diag_->At(*r.Find("command"), path + ".command", "must name a program");
        } else {
          // ./x and ../x are relative to the file that sets them (programs run
          // in a private folder of their own).
          const CNode* cn = r.Find("command");
          for (size_t i = 0; i < rc->command.size(); ++i) {
            std::string& arg = rc->command[i];
            if (arg.rfind("./", 0) != 0 && arg.rfind("../", 0) != 0) continue;
            const CNode* item = cn->kind == CNode::Kind::kList && i < cn->items.size() ? &cn->items[i] : cn;
            arg = ResolvePath(arg, item->file);
            if (!FileExists(arg)) diag_->At(*item, path + ".command", "no such file: " + arg);
          }
        }
        if (GetString(r, path, "sandbox", &rc->sandbox)) {
          static const std::vector<std::string> kSandboxes = {"bwrap", "apptainer", "none"};
          if (!Contains(kSandboxes, rc->sandbox)) {
            diag_->At(*r.Find("sandbox"), path + ".sandbox",
                      "unknown sandbox '" + rc->sandbox + "'" + Suggest(rc->sandbox, kSandboxes) + " (bwrap, apptainer, none)");
          } else if (rc->sandbox == "none") {
            diag_->WarnAtKey(*r.Find("sandbox"), path + ".sandbox",
                             "runs the program as a plain process: no file, network or process isolation");
          }
        }
        GetString(r, path, "image", &rc->image);
        if (rc->sandbox == "apptainer" && rc->image.empty()) Missing(r, path, "image", " (the Apptainer image)");
        GetDouble(r, path, "timeout_s", &rc->timeout_s, false);
        GetBool(r, path, "network", &rc->network);
        GetInt(r, path, "memory_mb", &rc->memory_mb, 1, std::numeric_limits<int64_t>::max());
        GetInt(r, path, "cpu_s", &rc->cpu_s, 0, std::numeric_limits<int64_t>::max());
        GetInt(r, path, "max_processes", &rc->max_processes, 1, 1000000);
        GetInt(r, path, "max_file_mb", &rc->max_file_mb, 1, std::numeric_limits<int64_t>::max());
        GetInt(r, path, "max_sessions", &rc->max_sessions, 1, 10000000);
        GetInt(r, path, "max_tool_calls", &rc->max_tool_calls, 1, 10000000);
        GetDouble(r, path, "idle_timeout_s", &rc->idle_timeout_s, false);
        if (const CNode* en = Get(r, "environment")) {
          if (en->kind != CNode::Kind::kMap) {
            diag_->At(*en, path + ".environment", "expected a map of variable -> value, got " + Describe(*en));
          } else {
            for (const auto& ee : en->entries) {
              if (ee.value.kind != CNode::Kind::kScalar || ee.value.scalar.is_null()) {
                diag_->At(ee.value, path + ".environment." + ee.key, "expected a string, got " + Describe(ee.value));
                continue;
              }
              rc->environment[ee.key] = ee.value.IsString() ? ee.value.str() : DumpJson(ee.value.scalar);
            }
          }
        }
        if (rc->type == RoleType::kExec) {
          rc->input = GetExpr(r, path, "input", false);
          GetString(r, path, "var", &rc->var);
        }
        break;
      }
      case RoleType::kReward:
        GetString(r, path, "env", &rc->env);
        GetString(r, path, "agent", &rc->agent);
        rc->termination = GetExpr(r, path, "termination", false);
        if (rc->env.empty()) {
          rc->expr = GetExpr(r, path, "expr", true);
          for (const char* k : {"agent", "termination"})
            if (Get(r, k)) diag_->AtKey(*r.Find(k), Join(path, k), "applies only with env: (an environment's reward)");
        } else if (Get(r, "expr")) {
          diag_->AtKey(*r.Find("expr"), path + ".expr", "set either expr or env, not both");
        }
        rc->var = "reward";
        GetString(r, path, "var", &rc->var);
        break;
      case RoleType::kMessage:
        rc->content = GetTemplate(r, path, "content");
        if (!rc->content && Get(r, "content") == nullptr) Missing(r, path, "content", " (the text of the turn)");
        GetString(r, path, "as", &rc->as);
        if (rc->as.empty()) rc->as = rc->name.empty() ? path.substr(path.rfind('.') + 1) : rc->name;
        break;
      case RoleType::kNoop:
        break;
    }
  }

  void BuildFlow(const CNode& f, Pipeline* p) {
    CheckKeys(f, "flow", kFlowKeys, "flow");
    FlowConfig& flow = p->flow;
    GetString(f, "flow", "start", &flow.start, true);
    GetInt(f, "flow", "max_steps", &flow.max_steps, 1, 10000000);
    GetInt(f, "flow", "max_tokens", &flow.max_tokens, 0, int64_t{1} << 50);
    const CNode* steps = Get(f, "steps");
    if (steps == nullptr) {
      Missing(f, "flow", "steps");
      return;
    }
    if (steps->kind != CNode::Kind::kMap) {
      diag_->At(*steps, "flow.steps", "expected a map of step names, got " + Describe(*steps));
      return;
    }
    for (const auto& e : steps->entries) {
      const std::string path = "flow.steps." + e.key;
      if (IsTerminalTarget(e.key)) {
        diag_->AtKey(e.value, path, "'" + e.key + "' is a reserved target name; rename the step");
        continue;
      }
      if (e.value.kind != CNode::Kind::kMap) {
        diag_->At(e.value, path, "expected a map (role, next, ...), got " + Describe(e.value));
        continue;
      }
      StepConfig sc;
      sc.name = e.key;
      BuildStep(e.value, path, &sc);
      flow.step_order.push_back(e.key);
      step_nodes_[e.key] = &e.value;
      flow.steps.emplace(e.key, std::move(sc));
    }
  }

  void BuildStep(const CNode& s, const std::string& path, StepConfig* sc) {
    CheckKeys(s, path, kStepKeys, "step");
    GetString(s, path, "role", &sc->role);
    if (const CNode* f = Get(s, "fanout")) {
      if (f->kind != CNode::Kind::kMap) {
        diag_->At(*f, path + ".fanout", "expected a map (branches or count/branch, join), got " + Describe(*f));
      } else {
        const std::string fp = path + ".fanout";
        CheckKeys(*f, fp, kFanoutKeys, "fanout");
        FanoutConfig fc;
        GetStringList(*f, fp, "branches", &fc.branches);
        GetInt(*f, fp, "count", &fc.count, 1, 100000);
        GetString(*f, fp, "branch", &fc.branch);
        GetString(*f, fp, "join", &fc.join);
        GetInt(*f, fp, "first", &fc.first, 0, 100000);
        GetDouble(*f, fp, "deadline_s", &fc.deadline_s, /*allow_zero=*/true);
        fc.value = GetExpr(*f, fp, "value", false);
        fc.score = GetExpr(*f, fp, "score", false);
        std::string combine = "none";
        GetString(*f, fp, "combine", &combine);
        static const std::map<std::string, FanoutConfig::Combine> kCombine = {
            {"none", FanoutConfig::Combine::kNone},
            {"concat", FanoutConfig::Combine::kConcat},
            {"vote", FanoutConfig::Combine::kVote},
            {"best", FanoutConfig::Combine::kBest}};
        if (auto c = kCombine.find(combine); c != kCombine.end()) {
          fc.combine = c->second;
        } else {
          diag_->At(*f->Find("combine"), fp + ".combine",
                    "unknown combine '" + combine + "' (none, concat, vote, best)");
        }
        if (fc.combine == FanoutConfig::Combine::kBest && !fc.score)
          diag_->AtKey(*f, fp, "combine: best needs a score expression");
        GetString(*f, fp, "var", &fc.var);
        const int width = fc.branches.empty() ? fc.count : static_cast<int>(fc.branches.size());
        if (fc.first > width && width > 0)
          diag_->At(*f->Find("first"), fp + ".first",
                    "first: " + std::to_string(fc.first) + " is more than the " + std::to_string(width) + " branches");
        bool by_list = !fc.branches.empty();
        bool by_count = fc.count > 0 || !fc.branch.empty();
        if (by_list == by_count) {
          diag_->AtKey(*f, fp, by_list ? "set either branches or count/branch, not both"
                                       : "a fan-out needs branches: [...] or count and branch");
        } else if (by_count && (fc.count <= 0 || fc.branch.empty())) {
          diag_->AtKey(*f, fp, "count and branch go together");
        }
        sc->fanout = std::move(fc);
      }
      if (!sc->role.empty()) diag_->At(*s.Find("role"), path + ".role", "a fan-out step runs no role");
    } else if (sc->role.empty() && Get(s, "role") == nullptr) {
      Missing(s, path, "role");
    }
    const CNode* next = Get(s, "next");
    if (next == nullptr) {
      sc->next.push_back(Transition{std::nullopt, kTargetDone, ""});
    } else if (next->kind == CNode::Kind::kScalar && next->IsString()) {
      sc->next.push_back(Transition{std::nullopt, next->str(), ""});
      targets_.push_back({sc->name, next->str(), next});
    } else if (next->kind == CNode::Kind::kList) {
      bool seen_default = false;
      for (size_t i = 0; i < next->items.size(); ++i) {
        const CNode& rule = next->items[i];
        const std::string rp = path + ".next[" + std::to_string(i) + "]";
        if (rule.kind != CNode::Kind::kMap) {
          diag_->At(rule, rp, "expected a rule {if: ..., goto: ..., reason: ...}, got " + Describe(rule));
          continue;
        }
        CheckKeys(rule, rp, kRuleKeys, "rule");
        Transition t;
        if (Get(rule, "if") != nullptr) t.cond = GetExpr(rule, rp, "if", false);
        if (seen_default) {
          diag_->WarnAtKey(rule, rp, "never used: an earlier rule has no 'if' and always matches");
        }
        if (Get(rule, "if") == nullptr) seen_default = true;
        GetString(rule, rp, "goto", &t.target, true);
        GetString(rule, rp, "reason", &t.reason);
        if (!t.target.empty()) targets_.push_back({sc->name, t.target, rule.Find("goto")});
        sc->next.push_back(std::move(t));
      }
      if (next->items.empty()) diag_->At(*next, path + ".next", "needs at least one rule");
    } else {
      diag_->At(*next, path + ".next", "expected a step name or a list of rules, got " + Describe(*next));
    }
    if (const CNode* set = Get(s, "set")) {
      if (set->kind != CNode::Kind::kMap) {
        diag_->At(*set, path + ".set", "expected a map of variable -> expression, got " + Describe(*set));
      } else {
        for (const auto& e : set->entries) {
          if (auto ex = CompileExpr(e.value, path + ".set." + e.key)) sc->set.push_back(SetVar{e.key, *ex});
        }
      }
    }
  }

  // ---- references across sections ----
  void CrossCheck(const CNode& root, Pipeline* p) {
    std::set<std::string> used_models, used_roles;
    const CNode* roles = root.Find("roles");
    for (const auto& [name, r] : p->roles) {
      if (r.type != RoleType::kLlm || r.model.empty()) continue;
      used_models.insert(r.model);
      if (p->models.count(r.model) == 0 && roles != nullptr) {
        const CNode* rn = roles->Find(name);
        const CNode* mn = rn ? rn->Find("model") : nullptr;
        std::vector<std::string> names;
        for (const auto& [m, mc] : p->models) names.push_back(m);
        diag_->At(mn ? *mn : root, "roles." + name + ".model",
                  "unknown model '" + r.model + "'" + Suggest(r.model, names) +
                      (names.empty() ? " (no models are defined)" : ""));
      }
    }
    std::vector<std::string> role_names, step_names;
    for (const auto& [name, r] : p->roles) role_names.push_back(name);
    for (const auto& name : p->flow.step_order) step_names.push_back(name);
    std::map<std::string, std::string> joins;  // join step -> its fan-out step
    for (const auto& [name, s] : p->flow.steps) {
      const CNode& sn = *step_nodes_[name];
      if (!s.role.empty()) {
        used_roles.insert(s.role);
        if (p->roles.count(s.role) == 0) {
          diag_->At(*sn.Find("role"), "flow.steps." + name + ".role",
                    "unknown role '" + s.role + "'" + Suggest(s.role, role_names));
        }
      }
      if (s.fanout) {
        const std::string fp = "flow.steps." + name + ".fanout";
        const CNode* fn = sn.Find("fanout");
        auto check = [&](const std::string& target, const char* key) {
          if (!target.empty() && p->flow.steps.count(target) == 0) {
            const CNode* kn = fn->Find(key);
            diag_->At(kn ? *kn : *fn, fp + "." + key, "unknown step '" + target + "'" + Suggest(target, step_names));
          }
        };
        for (const auto& b : s.fanout->branches) check(b, "branches");
        check(s.fanout->branch, "branch");
        check(s.fanout->join, "join");
        if (!s.fanout->join.empty() && !joins.emplace(s.fanout->join, name).second) {
          diag_->At(*fn->Find("join"), fp + ".join",
                    "step '" + s.fanout->join + "' is already the join of fan-out step '" + joins[s.fanout->join] +
                        "'; a join step serves one fan-out");
        }
        if (const StepConfig* j = p->Step(s.fanout->join)) {
          if (step_nodes_[j->name]->Find("next") != nullptr) {
            diag_->AtKey(*step_nodes_[j->name]->Find("next"), "flow.steps." + j->name + ".next",
                         "a join step continues with the `next` of its fan-out step '" + name + "'; remove this 'next'");
          }
        }
      }
    }
    for (const auto& t : targets_) {
      if (IsTerminalTarget(t.target) || p->flow.steps.count(t.target) != 0) continue;
      diag_->At(*t.node, "flow.steps." + t.step + ".next",
                "unknown step '" + t.target + "'" + Suggest(t.target, step_names) +
                    " (targets are steps or done, failed, filtered, join)");
    }
    if (!p->flow.start.empty() && p->flow.steps.count(p->flow.start) == 0 && root.Find("flow") != nullptr) {
      const CNode* sn = root.Find("flow")->Find("start");
      diag_->At(sn ? *sn : root, "flow.start", "unknown step '" + p->flow.start + "'" + Suggest(p->flow.start, step_names));
    }
    CheckRoleReferences(root, p);
    CheckReachability(p);
    for (const auto& [name, r] : p->roles) {
      if (used_roles.count(name) == 0 && roles != nullptr) {
        diag_->WarnAtKey(*roles->Find(name), "roles." + name, "role is not used by any step");
      }
    }
    if (const CNode* models = root.Find("models"); models != nullptr && models->kind == CNode::Kind::kMap) {
      for (const auto& [name, m] : p->models) {
        if (used_models.count(name) == 0) {
          diag_->WarnAtKey(*models->Find(name), "models." + name, "model is not used by any role");
        }
      }
    }
  }

  // tools_from / env name tool roles; agent names an llm role.
  void CheckRoleReferences(const CNode& root, Pipeline* p) {
    const CNode* roles = root.Find("roles");
    if (roles == nullptr) return;
    std::vector<std::string> tool_roles, llm_roles;
    for (const auto& [name, r] : p->roles) {
      if (r.type == RoleType::kTool) tool_roles.push_back(name);
      if (r.type == RoleType::kLlm) llm_roles.push_back(name);
    }
    auto check = [&](const std::string& role, const char* key, const std::string& target,
                     const std::vector<std::string>& allowed, const char* what) {
      if (target.empty() || Contains(allowed, target)) return;
      const CNode* rn = roles->Find(role);
      const CNode* kn = rn ? rn->Find(key) : nullptr;
      diag_->At(kn ? *kn : *roles, "roles." + role + "." + key,
                "'" + target + "' is not " + what + Suggest(target, allowed) +
                    (allowed.empty() ? " (the pipeline has none)" : ""));
    };
    for (const auto& [name, r] : p->roles) {
      check(name, "tools_from", r.tools_from, tool_roles, "a role of type tool");
      check(name, "env", r.env, tool_roles, "a role of type tool");
      check(name, "agent", r.agent, llm_roles, "a role of type llm");
    }
  }

  // Successor steps of `s`: transition targets, fan-out branches and join.
  static std::vector<std::string> Successors(const StepConfig& s, bool include_fanout) {
    std::vector<std::string> out;
    for (const auto& t : s.next) {
      if (!IsTerminalTarget(t.target)) out.push_back(t.target);
    }
    if (s.fanout && include_fanout) {
      for (const auto& b : s.fanout->BranchStarts()) out.push_back(b);
      if (!s.fanout->join.empty()) out.push_back(s.fanout->join);
    }
    return out;
  }

  std::set<std::string> Reach(const Pipeline& p, std::vector<std::string> frontier, bool include_fanout) {
    std::set<std::string> seen;
    while (!frontier.empty()) {
      std::string cur = frontier.back();
      frontier.pop_back();
      const StepConfig* s = p.Step(cur);
      if (s == nullptr || !seen.insert(cur).second) continue;
      for (auto& n : Successors(*s, include_fanout)) frontier.push_back(n);
    }
    return seen;
  }

  void CheckReachability(Pipeline* p) {
    std::set<std::string> reached;
    const bool have_start = p->Step(p->flow.start) != nullptr;
    if (have_start) reached = Reach(*p, {p->flow.start}, true);
    std::vector<std::string> branch_starts;
    for (const auto& [name, s] : p->flow.steps) {
      if (!s.fanout) continue;
      for (const auto& b : s.fanout->BranchStarts()) branch_starts.push_back(b);
    }
    std::set<std::string> in_branches = Reach(*p, branch_starts, false);
    // A loop with no way out is bounded only by flow.max_steps: every task
    // in it would fail. Steps that can end the task (or their branch):
    std::set<std::string> can_end;
    std::set<std::string> joins;
    for (const auto& [name, s] : p->flow.steps)
      if (s.fanout && !s.fanout->join.empty()) joins.insert(s.fanout->join);
    for (bool changed = true; changed;) {
      changed = false;
      for (const auto& [name, s] : p->flow.steps) {
        if (can_end.count(name)) continue;
        bool ends = joins.count(name) > 0;  // goes on with its fan-out's `next`
        for (const auto& t : s.next) ends |= IsTerminalTarget(t.target) || can_end.count(t.target) > 0;
        if (ends) changed = can_end.insert(name).second || changed;
      }
    }
    std::vector<std::string> stuck;
    for (const auto& name : p->flow.step_order)
      if (!can_end.count(name) && (reached.count(name) || in_branches.count(name))) stuck.push_back(name);
    if (!stuck.empty()) {
      std::string list;
      for (const auto& n : stuck) list += (list.empty() ? "'" : ", '") + n + "'";
      const CNode* first = step_nodes_[stuck.front()];
      const CNode* next = first->Find("next");
      diag_->At(next ? *next : *first, "flow.steps." + stuck.front() + ".next",
                "a cycle without a way out: no path from step" + std::string(stuck.size() > 1 ? "s " : " ") + list +
                    " reaches done, failed, filtered or join, so every task would run until flow.max_steps; "
                    "add a conditional transition that leaves the loop");
    }
    for (const auto& name : p->flow.step_order) {
      const CNode& sn = *step_nodes_[name];
      if (have_start && reached.count(name) == 0) {
        diag_->WarnAtKey(sn, "flow.steps." + name, "step is never reached from start '" + p->flow.start + "'");
      }
      const StepConfig& s = p->flow.steps.at(name);
      for (const auto& t : s.next) {
        if (t.target == kTargetJoin && in_branches.count(name) == 0) {
          const CNode* next = sn.Find("next");
          diag_->At(next ? *next : sn, "flow.steps." + name + ".next",
                    "'join' ends a fan-out branch, but this step is not part of any branch");
          break;
        }
      }
    }
  }

  struct TargetRef {
    std::string step;
    std::string target;
    const CNode* node;
  };

  const std::string& top_file_;
  Diag* diag_;
  LoadOptions options_;
  std::vector<TargetRef> targets_;
  std::map<std::string, const CNode*> step_nodes_;
};

}  // namespace

LoadResult LoadPipeline(const std::string& path, const std::vector<std::string>& overrides,
                        const LoadOptions& options) {
  LoadResult result;
  Diag diag;
  CNode root;
  Composer composer(&diag);
  bool loaded = composer.Load(path, "", 0, "", &root);
  if (loaded) {
    if (root.Find("name") == nullptr) {
      CNode name;
      name.kind = CNode::Kind::kScalar;
      name.scalar = fs::path(path).stem().string();
      name.file = path;
      name.line = 0;
      name.resolved = true;
      root.entries.insert(root.entries.begin(), CEntry{"name", std::move(name)});
    }
    for (const auto& o : overrides) ApplyOverride(o, &root, &diag);
    Interpolator(&root, &diag).Run();
  }
  if (loaded && !diag.has_errors()) {
    try {
      Pipeline p;
      p.source_path = ResolvePath(path, "");
      Builder(path, &diag, options).Build(&root, &p);
      if (!diag.has_errors()) {
        p.merged = ToJson(root);
        Json def = Json::object();
        for (const char* k : {"models", "roles", "flow"}) def[k] = p.merged.contains(k) ? p.merged[k] : Json();
        // Prices change what is reported, not what tasks do.
        if (def["models"].is_object())
          for (auto& [name, m] : def["models"].items())
            if (m.is_object()) m.erase("price");
        p.hash = Hash64(DumpJson(def));
        result.pipeline = std::move(p);
      }
    } catch (const std::exception& e) {
      diag.Error(path, 0, "", std::string("internal error while loading: ") + e.what());
      result.pipeline.reset();
    }
  }
  result.errors = std::move(diag.errors());
  result.warnings = std::move(diag.warnings());
  return result;
}

StatusOr<Pipeline> LoadPipelineOrError(const std::string& path, const std::vector<std::string>& overrides) {
  LoadResult r = LoadPipeline(path, overrides);
  for (const auto& w : r.warnings) LOG_WARN << w.ToString();
  if (!r.errors.empty() || !r.pipeline) {
    std::string msg = "invalid pipeline " + path + ":";
    for (const auto& e : r.errors) msg += "\n  " + e.ToString();
    return FailedPrecondition(msg);
  }
  return std::move(*r.pipeline);
}

}  // namespace matrix::config
