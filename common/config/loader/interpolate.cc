// Interpolation of ${...} references in the tree.
#include "common/config/loader/interpolate.h"

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "common/config/expr.h"

namespace matrix::config::loader_internal {
namespace {

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

}  // namespace

void Interpolate(CNode* root, Diag* diag) { Interpolator(root, diag).Run(); }

}  // namespace matrix::config::loader_internal
