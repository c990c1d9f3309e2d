// Agents that run programs: `tool` (the task's MCP environment session runs
// the tool calls of the last turn), `exec` (a one-shot sandboxed program) and
// `reward` (an expression, or the environment's own matrix/reward).
#include <memory>

#include "common/config/pipeline.h"
#include "daemons/agent_worker/agents.h"
#include "daemons/agent_worker/env_pool.h"

namespace matrix::worker {

EnvSpec EnvSpecFor(const config::RoleConfig& role) {
  EnvSpec e;
  e.name = role.name;
  auto kind = sandbox::ParseKind(role.sandbox);
  e.sandbox.kind = kind.ok() ? *kind : sandbox::Kind::kBwrap;
  e.sandbox.command = role.command;
  e.sandbox.network = role.network;
  e.sandbox.image = role.image;
  e.sandbox.limits.memory_mb = role.memory_mb;
  e.sandbox.limits.cpu_s = role.cpu_s;
  e.sandbox.limits.max_processes = role.max_processes;
  e.sandbox.limits.max_file_mb = role.max_file_mb;
  for (const auto& [k, v] : role.environment) e.sandbox.env.emplace_back(k, v);
  e.call_timeout_s = role.timeout_s;
  e.start_timeout_s = std::max(60.0, role.timeout_s);
  return e;
}

namespace {

std::string Str(const Json& v) { return v.is_string() ? v.get<std::string>() : DumpJson(v); }

// The text an MCP tools/call result shows the model: its text items joined,
// other items (images, resources) as JSON.
std::string ResultText(const Json& result) {
  if (!result.is_object() || !result.contains("content") || !result["content"].is_array()) {
    if (result.is_object() && result.contains("structuredContent")) return DumpJson(result["structuredContent"]);
    return result.is_null() ? "" : DumpJson(result);
  }
  std::string out;
  for (const auto& item : result["content"]) {
    if (!out.empty()) out += "\n";
    if (item.is_object() && item.value("type", "") == "text" && item.contains("text"))
      out += Str(item["text"]);
    else
      out += DumpJson(item);
  }
  return out;
}

// Runs `then(session, started)` with the task's session of `env_role`,
// starting one when the task has none (started = true: the caller's edit
// must add the lease). Ends the step itself when the session is lost.
void WithSession(const StepContext& s, AgentHost& host, const config::RoleConfig& env_role,
                 std::function<void(const std::string&, bool)> then) {
  EnvPool* envs = host.envs();
  if (!envs) {
    return host.Complete(s.run_id, StepOutcome::Failed("env_error", "this worker runs no environments"));
  }
  if (const wire::ResourceLease* lease = FindEnvLease(s.task, env_role.name)) {
    if (lease->holder != host.identity()) {
      return host.Complete(s.run_id, StepOutcome::Lost("env_lost", "the environment session of '" + env_role.name +
                                                                       "' lived on worker " + lease->holder +
                                                                       ", which is gone"));
    }
    if (!envs->Has(lease->id)) {
      std::string why = envs->Why(lease->id);
      return host.Complete(s.run_id, StepOutcome::Failed("env_error", "environment session " + lease->id + " of '" +
                                                                         env_role.name + "' ended" +
                                                                         (why.empty() ? "" : ": " + why)));
    }
    return then(lease->id, false);
  }
  Json input = s.ctx.contains("input") ? s.ctx["input"] : Json(nullptr);
  uint64_t run_id = s.run_id;
  std::string name = env_role.name;
  envs->Acquire(EnvSpecFor(env_role), s.task.task_id, input, s.task.seed,
                [&host, run_id, name, then = std::move(then)](StatusOr<std::string> session) {
                  if (!session.ok()) {
                    return host.Complete(run_id, StepOutcome::Failed("env_error", "environment '" + name + "': " +
                                                                                      session.status().message()));
                  }
                  then(*session, true);
                });
}

TaskEdit AddLease(const std::string& env_role, const std::string& session, const std::string& holder, bool add) {
  if (!add) return nullptr;
  return [kind = kEnvLeasePrefix + env_role, session, holder](wire::Task& t) {
    t.leases.push_back({kind, session, holder, 0});
  };
}

StepOutcome EnvFailure(const std::string& what, const Status& st) {
  return StepOutcome::Failed(st.code() == StatusCode::kDeadlineExceeded ? "env_timeout" : "env_error",
                             what + ": " + st.message());
}

class ToolAgent final : public Agent {
 public:
  unsigned ContextParts(const config::RoleConfig&) const override { return kCtxInput; }
  std::string EnvRole(const config::RoleConfig& role) const override { return role.name; }

  void Run(const StepContext& s, AgentHost& host) const override {
    std::vector<wire::ToolCall> calls;
    if (!s.task.history.empty()) calls = s.task.history.back().tool_calls;
    if (calls.empty()) return host.Complete(s.run_id, StepOutcome::Continue());
    int64_t used = s.task.counters.count("tool_calls") ? s.task.counters.at("tool_calls") : 0;
    if (used + static_cast<int64_t>(calls.size()) > s.role.max_tool_calls) {
      return host.Complete(s.run_id, StepOutcome::Failed("max_tool_calls",
                                                         "the task made " + std::to_string(used + calls.size()) +
                                                             " tool calls (roles." + s.role.name +
                                                             ".max_tool_calls = " + std::to_string(s.role.max_tool_calls) + ")"));
    }
    struct State {
      std::vector<wire::ToolCall> calls;
      std::vector<wire::Turn> turns;
      int errors = 0;
      std::string session;
      bool added = false;
      std::string step, role;
      uint64_t run_id;
    };
    auto st = std::make_shared<State>();
    st->calls = std::move(calls);
    st->step = s.step.name;
    st->role = s.step.role;
    st->run_id = s.run_id;
    WithSession(s, host, s.role, [st, &host](const std::string& session, bool added) {
      st->session = session;
      st->added = added;
      Next(st, host);
    });
  }

 private:
  template <typename State>
  static TaskEdit Apply(const std::shared_ptr<State>& st, const std::string& holder) {
    TaskEdit lease = AddLease(st->role, st->session, holder, st->added);
    return [st, lease](wire::Task& t) {
      if (lease) lease(t);
      for (auto& turn : st->turns) t.history.push_back(std::move(turn));
      t.counters["tool_calls"] += static_cast<int64_t>(st->turns.size());
      if (st->errors) t.counters["tool_errors"] += st->errors;
      st->turns.clear();
    };
  }

  template <typename State>
  static void Next(const std::shared_ptr<State>& st, AgentHost& host) {
    while (st->turns.size() < st->calls.size()) {
      const wire::ToolCall& call = st->calls[st->turns.size()];
      int64_t start = host.clock().WallMicros();
      auto add = [st, &host, start, call](std::string text, bool error) {
        wire::Turn turn;
        turn.step = st->step;
        turn.role = st->role;
        turn.kind = "tool";
        turn.content.text = std::move(text);
        turn.tool_call_id = call.id;
        turn.start_us = start;
        turn.end_us = host.clock().WallMicros();
        Json extra = {{"tool", call.name}};
        if (error) extra["error"] = true;
        turn.extra = DumpJson(extra);
        if (error) st->errors++;
        st->turns.push_back(std::move(turn));
      };
      Json args = call.arguments.empty() ? Json::object() : Json::parse(call.arguments, nullptr, false);
      if (args.is_discarded() || !args.is_object()) {
        add("Error: the arguments of tool '" + call.name + "' are not a valid JSON object: " +
                call.arguments.substr(0, 200),
            true);
        continue;
      }
      if (call.name.empty()) {
        add("Error: the tool call has no function name.", true);
        continue;
      }
      host.envs()->Call(st->session, "tools/call", {{"name", call.name}, {"arguments", std::move(args)}},
                        [st, &host, add, name = call.name](StatusOr<Json> r) {
                          if (r.ok()) {
                            bool is_error = r->is_object() && r->value("isError", false) == true;
                            add(ResultText(*r), is_error);
                          } else if (r.status().code() == StatusCode::kInvalidArgument) {
                            // A JSON-RPC error (unknown tool, bad arguments): the model sees it.
                            add("Error: " + r.status().message(), true);
                          } else {
                            return host.Complete(st->run_id, EnvFailure("tool '" + name + "'", r.status()),
                                                 Apply(st, host.identity()));
                          }
                          Next(st, host);
                        });
      return;
    }
    host.Complete(st->run_id, StepOutcome::Continue(), Apply(st, host.identity()));
  }
};

class ExecAgent final : public Agent {
 public:
  unsigned ContextParts(const config::RoleConfig& role) const override {
    return role.input ? ContextPartsFor(role.input->text()) : (kCtxInput | kCtxVars | kCtxCounters | kCtxTask);
  }
  void Run(const StepContext& s, AgentHost& host) const override {
    Json in;
    if (s.role.input) {
      auto v = s.role.input->Eval(s.ctx);
      if (!v.ok()) return host.Complete(s.run_id, RoleError(s, v.status()));
      in = std::move(*v);
    } else {
      in = Json::object();
      for (const char* k : {"input", "vars", "counters", "task"})
        if (s.ctx.contains(k)) in[k] = s.ctx[k];
    }
    EnvPool* envs = host.envs();
    if (!envs) return host.Complete(s.run_id, StepOutcome::Failed("exec_error", "this worker runs no programs"));
    uint64_t run_id = s.run_id;
    std::string var = s.role.var, step = s.step.name;
    envs->RunOnce(EnvSpecFor(s.role), DumpJson(in) + "\n",
                  [&host, run_id, var, step](StatusOr<std::string> out) {
                    if (!out.ok()) {
                      return host.Complete(run_id, StepOutcome::Failed(
                                                       out.status().code() == StatusCode::kDeadlineExceeded
                                                           ? "exec_timeout"
                                                           : "exec_error",
                                                       "step '" + step + "': " + out.status().message()));
                    }
                    Json parsed = Json::parse(*out, nullptr, false);
                    if (parsed.is_discarded() || (var.empty() && !parsed.is_object())) {
                      return host.Complete(run_id, StepOutcome::Failed(
                                                       "exec_error", "step '" + step + "': the program's output is not a JSON object: " +
                                                                         out->substr(0, 200)));
                    }
                    auto value = std::make_shared<Json>(std::move(parsed));
                    host.Complete(run_id, StepOutcome::Continue(), [value, var](wire::Task& t) {
                      if (!var.empty()) return SetVar(t, var, *value);
                      for (auto& [k, v] : value->items()) SetVar(t, k, v);
                    });
                  });
  }
};

class RewardAgent final : public Agent {
 public:
  unsigned ContextParts(const config::RoleConfig& role) const override {
    if (role.env.empty()) return role.expr ? ContextPartsFor(role.expr->text()) : 0u;
    return kCtxAll;
  }
  std::string EnvRole(const config::RoleConfig& role) const override { return role.env; }
  bool EndsInRun(const config::RoleConfig& role) const override { return role.env.empty(); }

  void Run(const StepContext& s, AgentHost& host) const override {
    if (s.role.env.empty()) return RunRewardExpr(s, host);
    const config::RoleConfig* env_role = host.pipeline().Role(s.role.env);
    if (!env_role) return host.Complete(s.run_id, RoleError(s, InvalidArgument("no tool role '" + s.role.env + "'")));
    std::string termination;
    if (s.role.termination) {
      auto v = s.role.termination->Eval(s.ctx);
      if (!v.ok()) return host.Complete(s.run_id, RoleError(s, v.status()));
      termination = v->is_null() ? "" : Str(*v);
    }
    // The trajectory as the environment's agent saw it.
    Json messages = Json::array();
    for (const auto& turn : s.view.history) {
      if (!turn.conversation) continue;
      std::string text = ContentText(turn.content, s.resolved);
      Json m = {{"name", turn.role}, {"content", text}};
      if (!turn.tool_call_id.empty()) {
        m["role"] = "tool";
        m["tool_call_id"] = turn.tool_call_id;
        Json extra = Json::parse(turn.extra, nullptr, false);
        if (extra.is_object() && extra.value("error", false)) m["error"] = true;
      } else {
        m["role"] = turn.role == s.role.agent ? "assistant" : "user";
      }
      if (!turn.tool_calls.empty()) {
        Json calls = Json::array();
        for (const auto& c : turn.tool_calls)
          calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
        m["tool_calls"] = calls;
      }
      messages.push_back(std::move(m));
    }
    auto params = std::make_shared<Json>(Json{{"messages", std::move(messages)}, {"termination", termination}});
    uint64_t run_id = s.run_id;
    std::string var = s.role.var.empty() ? "reward" : s.role.var, env = s.role.env;
    WithSession(s, host, *env_role, [&host, run_id, params, var, env](const std::string& session, bool added) {
      TaskEdit lease = AddLease(env, session, host.identity(), added);
      if (!host.envs()->HasEpisode(session)) {
        return host.Complete(run_id, StepOutcome::Failed("env_error", "environment '" + env +
                                                                          "' does not offer matrix/reward"), lease);
      }
      host.envs()->Call(session, "matrix/reward", std::move(*params), [&host, run_id, var, lease](StatusOr<Json> r) {
        if (!r.ok()) return host.Complete(run_id, EnvFailure("matrix/reward", r.status()), lease);
        if (!r->is_object() || !(*r)["reward"].is_number()) {
          return host.Complete(run_id, StepOutcome::Failed("env_error", "matrix/reward returned no number 'reward': " +
                                                                            DumpJson(*r).substr(0, 200)), lease);
        }
        auto result = std::make_shared<Json>(std::move(*r));
        host.Complete(run_id, StepOutcome::Continue(), [result, var, lease](wire::Task& t) {
          if (lease) lease(t);
          SetVar(t, var, (*result)["reward"]);
          SetVar(t, var + "_info", result->value("breakdown", Json::object()));
        });
      });
    });
  }
};

}  // namespace

void RegisterEnvAgents(AgentRegistry* registry) {
  registry->Register("tool", std::make_unique<ToolAgent>());
  registry->Register("exec", std::make_unique<ExecAgent>());
  registry->Register("reward", std::make_unique<RewardAgent>());
}

}  // namespace matrix::worker
