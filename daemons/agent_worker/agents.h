// Built-in agent types that run inside the worker's loop, and the pieces the
// loop needs around them:
//   llm      - BuildChatBody() renders the prompt templates and maps the
//              history to chat messages: the role's own turns become
//              "assistant", the other agents' conversation turns "user".
//   extract  - regex (first capture group) or JSON fields from a text into vars.
//   compare  - two expressions compared (optionally case-insensitive) into a var.
//   filter   - a condition; false ends the task as `filtered`.
//   reward   - an expression stored as vars.reward.
//   noop     - does nothing (benchmarks, joins).
// Route() evaluates a step's transitions and `set` assignments.
// Thread-safety: pure functions over their arguments.
#pragma once

#include <string>

#include "common/base/json.h"
#include "common/base/status.h"
#include "common/wire/task.h"
#include "daemons/agent_worker/task_view.h"

namespace matrix::config {
struct Pipeline;
struct RoleConfig;
struct StepConfig;
}  // namespace matrix::config

namespace matrix::worker {

// Chat-completions request body for an llm role (without "model").
StatusOr<Json> BuildChatBody(const config::Pipeline& pipeline, const std::string& role_name,
                             const config::RoleConfig& role, const wire::Task& task,
                             const Resolved& resolved, const Json& ctx);

struct LocalOutcome {
  Status status;          // not OK: the task fails with this error
  bool filtered = false;  // filter role said no
};
// Runs an extract / compare / filter / reward / noop role on the task.
LocalOutcome RunLocalRole(const config::RoleConfig& role, wire::Task& task, const Json& ctx);

// Where a task goes after a step.
struct RouteDecision {
  std::string target;  // next step, or "done" / "failed" / "filtered"
  std::string reason;
  Status status;       // not OK: an expression failed
};
RouteDecision Route(const config::StepConfig& step, wire::Task& task, const Json& ctx);

bool IsTerminal(const std::string& target);
// The context parts (task_view.h) a role reads to run, and that a step's
// `set` and transition conditions read; 0 means no context is needed.
unsigned RoleContextParts(const config::RoleConfig& role);
unsigned RouteContextParts(const config::StepConfig& step);

}  // namespace matrix::worker
