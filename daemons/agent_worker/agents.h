// The pieces of the step state machine around the agents (agent.h):
//   BuildChatBody() renders an llm role's prompt templates and maps the
//   history to chat messages: the role's own turns become "assistant", the
//   other agents' conversation turns "user"; tool calls and their results are
//   seen only by the role that made the calls.
//   Route() evaluates a step's transitions and `set` assignments.
// Thread-safety: pure functions over their arguments.
#pragma once

#include <string>

#include "common/base/json.h"
#include "common/base/status.h"
#include "common/wire/task.h"
#include "daemons/agent_worker/agent.h"
#include "daemons/agent_worker/task_view.h"

namespace matrix::config {
struct Pipeline;
struct RoleConfig;
struct StepConfig;
}  // namespace matrix::config

namespace matrix::worker {

// Chat-completions request body for an llm role (without "model"). With
// `prompts`, a template that reads only the input is rendered once per task
// and kept there for the task's later steps.
StatusOr<ChatBody> BuildChatBody(const config::Pipeline& pipeline, const std::string& role_name,
                             const config::RoleConfig& role, const wire::Task& task,
                             const Resolved& resolved, const Json& ctx, PromptMemo* prompts = nullptr);

// Whether every template BuildChatBody renders for `role` is kept in
// `prompts`: its context then needs no input.
bool PromptsKept(const config::RoleConfig& role, const PromptMemo& prompts);

// A failed expression or role configuration, as the step's outcome.
StepOutcome RoleError(const StepContext& step, const Status& status);
// reward with `expr`.
void RunRewardExpr(const StepContext& step, AgentHost& host);

// Where a task goes after a step.
struct RouteDecision {
  std::string target;  // next step, or "done" / "failed" / "filtered"
  std::string reason;
  Status status;       // not OK: an expression failed
};
RouteDecision Route(const config::StepConfig& step, wire::Task& task, const Json& ctx);

bool IsTerminal(const std::string& target);
// The context parts (task_view.h) that a step's `set` and transition
// conditions read; 0 means no context is needed.
unsigned RouteContextParts(const config::StepConfig& step);

}  // namespace matrix::worker
