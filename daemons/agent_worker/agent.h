// The Agent interface: one implementation per role type, registered by the
// type's name. The worker's step state machine looks the role's agent up,
// builds the context parts the agent asks for, and calls Run(); the agent
// ends the step exactly once, synchronously or later from a callback, with
// AgentHost::Complete(). What an agent needs from the worker (the LLM client,
// the tool environments, the clock) comes through AgentHost, so agents are
// tested against a fake host.
//
// Built-in types (agents.cc, llm_agent.cc, env_agents.cc):
//   llm      chat completion; tools from the pipeline and from an environment
//   extract  regex / JSON fields from a text into vars
//   compare  two expressions compared into a var
//   filter   a condition; false ends the task as filtered
//   reward   an expression, or the environment's own reward (matrix/reward)
//   noop     nothing (benchmarks, joins)
//   message  a fixed turn (a greeting) without a model call
//   tool     every tool call of the last turn, in the task's environment session
//   exec     a one-shot sandboxed program, JSON in / JSON out
// Thread-safety: agents are immutable and shared; Run() is called on the
// worker's loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/clock.h"
#include "common/base/json.h"
#include "common/wire/task.h"
#include "daemons/agent_worker/task_view.h"

namespace matrix::config {
struct Pipeline;
struct RoleConfig;
struct StepConfig;
}  // namespace matrix::config
namespace matrix::llm {
struct ChatResult;
}

namespace matrix::worker {

class EnvPool;

// How a step ended.
struct StepOutcome {
  enum class Kind { kContinue, kFiltered, kFailed, kLost };
  Kind kind = Kind::kContinue;
  std::string reason;  // recorded reason when the task ends here
  std::string error;

  static StepOutcome Continue() { return {}; }
  static StepOutcome Filtered() { return {Kind::kFiltered, "filtered", ""}; }
  static StepOutcome Failed(std::string reason, std::string error) {
    return {Kind::kFailed, std::move(reason), std::move(error)};
  }
  // Lost to infrastructure (an environment that went with its worker): the
  // owner admits the task again while attempts remain.
  static StepOutcome Lost(std::string reason, std::string error) {
    return {Kind::kLost, std::move(reason), std::move(error)};
  }
};

using TaskEdit = std::function<void(wire::Task&)>;

// A chat-completions request body (without "model"): the messages, the bulk
// of each call, written straight as JSON text; the other members as Json.
struct ChatBody {
  Json params = Json::object();  // sampling, tools, tool_choice, response_format, logprobs, seed
  std::string messages;          // "messages": a JSON array
  // The whole body, as a server reads it.
  Json ToJson() const {
    Json body = params;
    body["messages"] = Json::parse(messages, nullptr, /*allow_exceptions=*/false);
    return body;
  }
};

// Environment leases carried by a task: kind "env:<tool role>", id = the
// session, holder = the worker identity that runs the session.
inline constexpr char kEnvLeasePrefix[] = "env:";
// The queue of a step that must run where the task's session lives.
inline std::string StickyRole(const std::string& role, const std::string& holder) { return role + "@" + holder; }
// Queues that release a task's sessions before its record is written: one
// per worker ("env-release@<worker>") and a shared one for sessions whose
// worker is gone.
inline constexpr char kReleaseRole[] = "env-release";

class AgentHost {
 public:
  virtual ~AgentHost() = default;
  virtual const Clock& clock() const = 0;
  virtual const std::string& identity() const = 0;
  virtual const config::Pipeline& pipeline() const = 0;
  // Ends the step of `run_id`: applies `edit` to the task, then routes it
  // (kContinue) or ends it. Ignored when the run is gone (worker stopping).
  virtual void Complete(uint64_t run_id, StepOutcome outcome, const TaskEdit& edit = nullptr) = 0;
  // A chat completion for `run_id`; `done` gets the result on the loop thread.
  virtual void CallLlm(uint64_t run_id, const std::string& model, ChatBody body,
                       std::function<void(llm::ChatResult&)> done) = 0;
  // The worker's tool environments; nullptr when the pipeline has none.
  virtual EnvPool* envs() = 0;
};

// Renderings of a task's prompt templates, by template: the text when the
// template reads only `input` (which never changes), nullopt when it reads
// more and is rendered at each step.
using PromptMemo = std::unordered_map<const void*, std::optional<std::string>>;

struct StepContext {
  uint64_t run_id = 0;
  const config::StepConfig& step;
  const config::RoleConfig& role;
  wire::Task& task;          // the message: append turns, set vars and counters
  const wire::Task& view;    // the task with archived history in front (when read)
  const Resolved& resolved;  // stored content, by object id
  const Json& ctx;           // the context parts ContextParts() asked for
  // Prompts that read nothing but the task's input, rendered by an earlier
  // step of this task on this worker (BuildChatBody); nullptr: none kept.
  PromptMemo* prompts = nullptr;
};

class Agent {
 public:
  virtual ~Agent() = default;
  // The context parts (task_view.h) Run() reads for `role`.
  virtual unsigned ContextParts(const config::RoleConfig& role) const = 0;
  // The tool role whose environment session this step needs; "" = none.
  virtual std::string EnvRole(const config::RoleConfig& role) const { return ""; }
  // Run() always ends the step before it returns, using nothing but the
  // task (no model, no environment, no program): the worker may run such a
  // step in place, right after the step before it (run.max_steps_in_place).
  virtual bool EndsInRun(const config::RoleConfig& role) const { return false; }
  virtual void Run(const StepContext& step, AgentHost& host) const = 0;
};

class AgentRegistry {
 public:
  // Every built-in type above.
  static const AgentRegistry& Builtin();
  void Register(std::string type, std::unique_ptr<Agent> agent);
  const Agent* Find(const std::string& type) const;
  std::vector<std::string> Types() const;

 private:
  std::map<std::string, std::unique_ptr<Agent>> agents_;
};

// Factories of the built-in agents (one file each group).
void RegisterLocalAgents(AgentRegistry* registry);  // extract compare filter reward noop message
void RegisterLlmAgent(AgentRegistry* registry);
void RegisterEnvAgents(AgentRegistry* registry);    // tool exec

// The env lease the task holds for `env_role`, or nullptr.
const wire::ResourceLease* FindEnvLease(const wire::Task& task, const std::string& env_role);

}  // namespace matrix::worker
