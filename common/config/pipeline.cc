// Pipeline lookups and the human summary printed by `matrix validate`.
// Thread-safety: read-only functions over an immutable Pipeline.
#include "common/config/pipeline.h"

#include <sstream>

#include "common/base/hash.h"

namespace matrix::config {

bool IsTerminalTarget(const std::string& target) {
  return target == kTargetDone || target == kTargetFailed || target == kTargetFiltered ||
         target == kTargetJoin;
}

const char* RoleTypeName(RoleType type) {
  switch (type) {
    case RoleType::kLlm: return "llm";
    case RoleType::kExtract: return "extract";
    case RoleType::kCompare: return "compare";
    case RoleType::kFilter: return "filter";
    case RoleType::kTool: return "tool";
    case RoleType::kExec: return "exec";
    case RoleType::kReward: return "reward";
    case RoleType::kNoop: return "noop";
    case RoleType::kMessage: return "message";
  }
  return "unknown";
}

std::vector<std::string> FanoutConfig::BranchStarts() const {
  if (!branches.empty()) return branches;
  return std::vector<std::string>(static_cast<size_t>(count > 0 ? count : 0), branch);
}

const StepConfig* Pipeline::Step(const std::string& name) const {
  auto it = flow.steps.find(name);
  return it == flow.steps.end() ? nullptr : &it->second;
}

const RoleConfig* Pipeline::Role(const std::string& name) const {
  auto it = roles.find(name);
  return it == roles.end() ? nullptr : &it->second;
}

const ModelConfig* Pipeline::Model(const std::string& name) const {
  auto it = models.find(name);
  return it == models.end() ? nullptr : &it->second;
}

Json Pipeline::SamplingFor(const RoleConfig& role) const {
  const ModelConfig* m = Model(role.model);
  if (m == nullptr) return Json::object();
  Json out = m->sampling.is_object() ? m->sampling : Json::object();
  if (role.sampling.is_object()) out.merge_patch(role.sampling);
  return out;
}

namespace {

std::string DescribeTarget(const Transition& t) {
  std::string s = t.target;
  if (!t.reason.empty()) s += " (" + t.reason + ")";
  return s;
}

}  // namespace

std::string DescribePipeline(const Pipeline& p) {
  std::ostringstream o;
  o << "pipeline " << p.name << " (definition " << Hex64(p.hash) << ")\n";
  if (!p.source_path.empty()) o << "  file: " << p.source_path << "\n";
  o << "  dataset: " << p.dataset.path << " (" << (p.dataset.limit > 0 ? std::to_string(p.dataset.limit) + " rows" : "all rows")
    << ", " << p.dataset.partitions << " partition(s))\n";
  o << "  run: " << p.run.trials << " trial(s), " << p.run.max_concurrent_tasks
    << " tasks in flight per partition, " << p.run.max_attempts << " attempt(s), output "
    << p.run.output_dir << "\n";
  o << "  models:\n";
  for (const auto& [name, m] : p.models) {
    o << "    " << name << ": " << m.model << " @ ";
    for (size_t i = 0; i < m.endpoints.size(); ++i) o << (i ? ", " : "") << m.endpoints[i];
    o << " (" << m.max_concurrency_per_endpoint << " per endpoint";
    if (m.price)
      o << "; " << m.price->input_per_million << " / " << m.price->output_per_million << " " << m.price->currency
        << " per million prompt / completion tokens";
    o << ")\n";
  }
  o << "  roles:\n";
  for (const auto& [name, r] : p.roles) {
    o << "    " << name << ": " << RoleTypeName(r.type);
    if (!r.model.empty()) o << " model=" << r.model;
    if (!r.var.empty()) o << " var=" << r.var;
    o << " concurrency=" << r.concurrency << "\n";
  }
  o << "  flow: start " << p.flow.start << ", at most " << p.flow.max_steps << " steps per task\n";
  for (const auto& name : p.flow.step_order) {
    const StepConfig* s = p.Step(name);
    if (s == nullptr) continue;
    o << "    " << name;
    if (!s->role.empty()) o << " [" << s->role << "]";
    if (s->fanout) {
      const FanoutConfig& f = *s->fanout;
      o << " fan-out ";
      if (!f.branches.empty()) {
        for (size_t i = 0; i < f.branches.size(); ++i) o << (i ? ", " : "") << f.branches[i];
      } else {
        o << f.count << " x " << f.branch;
      }
      if (!f.join.empty()) o << ", join " << f.join;
    }
    o << " ->";
    for (size_t i = 0; i < s->next.size(); ++i) {
      const Transition& t = s->next[i];
      o << (i ? ";" : "") << " ";
      if (t.cond) o << "if " << t.cond->text() << ": ";
      else if (s->next.size() > 1) o << "else ";
      o << DescribeTarget(t);
    }
    for (const auto& sv : s->set) o << "; set " << sv.var << " = " << sv.expr.text();
    o << "\n";
  }
  return o.str();
}

}  // namespace matrix::config
