// Defaults composition and command-line overrides on the tree.
#include "common/config/loader/compose.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "common/base/files.h"
#include "common/config/loader/config_schema.h"
#include "common/config/loader/yaml_reader.h"

namespace matrix::config::loader_internal {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxConfigFileBytes = 8 * 1024 * 1024;
constexpr int kMaxDefaultsDepth = 32;

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

}  // namespace

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

namespace {

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

}  // namespace

bool ComposeFile(const std::string& path, Diag* diag, CNode* out) {
  return Composer(diag).Load(path, "", 0, "", out);
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

}  // namespace matrix::config::loader_internal
