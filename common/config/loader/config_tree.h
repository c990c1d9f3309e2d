// The tree pipeline loading works on: YAML values that remember the file
// and line of themselves and of their key (CNode), and the collector of
// errors and warnings that points at them (Diag).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/base/json.h"
#include "common/config/pipeline_loader.h"

namespace matrix::config::loader_internal {

// The file name of values given as command-line overrides.
inline constexpr char kCommandLine[] = "<command line>";

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

// "null", "a map", "a list", "a string", "a boolean", "an integer" or "a number".
const char* KindName(const CNode& n);
// KindName plus a scalar's value (cut at 40 bytes), for messages.
std::string Describe(const CNode& n);
Json ToJson(const CNode& n);
// Records where the key holding `n` is written.
void SetKeyLocation(CNode* n, const std::string& file, int line);

// Collects the errors and warnings of one load, each located at a value or
// at the key that holds it.
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

// "path.key", or "key" at the top.
std::string Join(const std::string& path, const std::string& key);
// " (did you mean 'x'?)" for the closest candidate, or "".
std::string Suggest(const std::string& word, const std::vector<std::string>& candidates);
// "a.b.0" -> {"a", "b", "0"}.
std::vector<std::string> SplitPath(const std::string& s);
// Whether a path element indexes a list (digits only).
bool IsIndex(const std::string& s);
// The keys of a map, in file order.
std::vector<std::string> KeysOf(const CNode& n);

}  // namespace matrix::config::loader_internal
