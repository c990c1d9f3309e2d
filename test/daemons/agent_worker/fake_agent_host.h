// FakeAgentHost: an AgentHost for unit tests of agents. Complete() applies
// the edit to the task under test and records the outcome; LLM calls are
// recorded and answered by the test (AnswerLlm); environments come from an
// EnvPool the test may attach.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/base/clock.h"
#include "common/config/pipeline.h"
#include "common/llm/llm_client.h"
#include "daemons/agent_worker/agent.h"
#include "daemons/agent_worker/agents.h"
#include "daemons/agent_worker/env_pool.h"

namespace matrix::worker {

class FakeAgentHost final : public AgentHost {
 public:
  FakeAgentHost(const config::Pipeline& pipeline, wire::Task* task) : pipeline_(pipeline), task_(task) {}

  const Clock& clock() const override { return clock_; }
  const std::string& identity() const override { return identity_; }
  const config::Pipeline& pipeline() const override { return pipeline_; }
  void Complete(uint64_t, StepOutcome outcome, const TaskEdit& edit) override {
    if (edit) edit(*task_);
    outcomes.push_back(std::move(outcome));
  }
  void CallLlm(uint64_t, const std::string& model, ChatBody body, std::function<void(llm::ChatResult&)> done) override {
    llm_calls.push_back({model, body.ToJson()});
    llm_done_ = std::move(done);
  }
  EnvPool* envs() override { return envs_; }

  void AnswerLlm(llm::ChatResult res) {
    auto done = std::move(llm_done_);
    done(res);
  }
  void AttachEnvs(EnvPool* envs) { envs_ = envs; }

  // Runs `role` of `step` on the task through the built-in registry.
  void RunStep(const std::string& step_name) {
    const config::StepConfig& step = *pipeline_.Step(step_name);
    const config::RoleConfig& role = *pipeline_.Role(step.role);
    const Agent* agent = AgentRegistry::Builtin().Find(config::RoleTypeName(role.type));
    Json ctx = BuildContext(*task_, {});
    agent->Run(StepContext{1, step, role, *task_, *task_, resolved_, ctx}, *this);
  }
  // The outcome of the last completed step.
  const StepOutcome& last() const { return outcomes.back(); }

  std::vector<StepOutcome> outcomes;
  std::vector<std::pair<std::string, Json>> llm_calls;
  FakeClock clock_;
  std::string identity_ = "worker.test";

 private:
  const config::Pipeline& pipeline_;
  wire::Task* task_;
  Resolved resolved_;
  EnvPool* envs_ = nullptr;
  std::function<void(llm::ChatResult&)> llm_done_;
};

}  // namespace matrix::worker
