// Cross-section references and reachability of a built pipeline.
#include "common/config/loader/flow_check.h"

#include <set>

#include "common/config/loader/config_schema.h"

namespace matrix::config::loader_internal {
namespace {

class FlowChecker {
 public:
  FlowChecker(const FlowNodes& nodes, const LoadOptions& options, Diag* diag)
      : nodes_(nodes), options_(options), diag_(diag) {}

  void Run(const CNode& root, Pipeline* p) {
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
      const CNode& sn = *nodes_.steps.at(name);
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
          if (nodes_.steps.at(j->name)->Find("next") != nullptr) {
            diag_->AtKey(*nodes_.steps.at(j->name)->Find("next"), "flow.steps." + j->name + ".next",
                         "a join step continues with the `next` of its fan-out step '" + name + "'; remove this 'next'");
          }
        }
      }
    }
    for (const auto& t : nodes_.targets) {
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

 private:
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
      const CNode* first = nodes_.steps.at(stuck.front());
      const CNode* next = first->Find("next");
      diag_->At(next ? *next : *first, "flow.steps." + stuck.front() + ".next",
                "a cycle without a way out: no path from step" + std::string(stuck.size() > 1 ? "s " : " ") + list +
                    " reaches done, failed, filtered or join, so every task would run until flow.max_steps; "
                    "add a conditional transition that leaves the loop");
    }
    for (const auto& name : p->flow.step_order) {
      const CNode& sn = *nodes_.steps.at(name);
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

  const FlowNodes& nodes_;
  const LoadOptions& options_;
  Diag* diag_;
};

}  // namespace

void CheckFlow(const CNode& root, const FlowNodes& nodes, const LoadOptions& options, Pipeline* p, Diag* diag) {
  FlowChecker(nodes, options, diag).Run(root, p);
}

}  // namespace matrix::config::loader_internal
