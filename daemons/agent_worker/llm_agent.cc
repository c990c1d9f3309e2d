// The llm agent: a chat completion built from the role's templates and the
// task's history, with the pipeline's tools and those its environment lists
// (tools_from). The answer, its tool calls included, becomes a turn.
#include "common/config/pipeline.h"
#include "common/llm/llm_client.h"
#include "daemons/agent_worker/agents.h"
#include "daemons/agent_worker/env_pool.h"

namespace matrix::worker {
namespace {

// MCP tool descriptions ({name, description, inputSchema}) as OpenAI tools.
Json OpenAiTools(const Json& mcp_tools) {
  Json out = Json::array();
  for (const auto& t : mcp_tools) {
    if (!t.is_object() || !t.contains("name") || !t["name"].is_string()) continue;
    Json params = t.contains("inputSchema") && t["inputSchema"].is_object()
                      ? t["inputSchema"]
                      : Json{{"type", "object"}, {"properties", Json::object()}};
    Json fn = {{"name", t["name"]}, {"parameters", params}};
    if (t.contains("description") && t["description"].is_string()) fn["description"] = t["description"];
    out.push_back({{"type", "function"}, {"function", fn}});
  }
  return out;
}

wire::Turn TurnFrom(llm::ChatResult& res, const std::string& step, const std::string& role, bool conversation,
                    const std::string& model, int64_t start_us, int64_t end_us) {
  wire::Turn turn;
  turn.step = step;
  turn.role = role;
  turn.kind = "llm";
  turn.conversation = conversation;
  turn.content.text = std::move(res.content);
  if (res.tool_calls.is_array()) {
    for (const auto& c : res.tool_calls) {
      if (!c.is_object()) continue;
      wire::ToolCall call;
      call.id = c.contains("id") && c["id"].is_string() ? c["id"].get<std::string>() : "";
      if (c.contains("function") && c["function"].is_object()) {
        const Json& fn = c["function"];
        call.name = fn.contains("name") && fn["name"].is_string() ? fn["name"].get<std::string>() : "";
        const Json& args = fn.contains("arguments") ? fn["arguments"] : Json();
        call.arguments = args.is_string() ? args.get<std::string>() : DumpJson(args);
      }
      turn.tool_calls.push_back(std::move(call));
    }
  }
  turn.prompt_tokens = res.prompt_tokens;
  turn.completion_tokens = res.completion_tokens;
  turn.finish_reason = res.finish_reason;
  turn.endpoint = res.endpoint;
  turn.model = model;
  turn.start_us = start_us;
  turn.end_us = end_us;
  turn.attempts = res.attempts;
  return turn;
}

class LlmAgent final : public Agent {
 public:
  unsigned ContextParts(const config::RoleConfig&) const override { return kCtxAll; }

  void Run(const StepContext& s, AgentHost& host) const override {
    const config::Pipeline& pipeline = host.pipeline();
    auto body = BuildChatBody(pipeline, s.step.role, s.role, s.view, s.resolved, s.ctx);
    if (!body.ok()) {
      return host.Complete(s.run_id, StepOutcome::Failed("prompt_error", "step '" + s.step.name + "': " +
                                                                               body.status().message()));
    }
    Call call{s.run_id, s.step.name, s.step.role, s.role.model, s.role.conversation, host.clock().WallMicros()};
    if (s.role.tools_from.empty()) return Submit(host, std::move(call), std::move(*body));
    const config::RoleConfig* env_role = pipeline.Role(s.role.tools_from);
    EnvPool* envs = host.envs();
    if (!env_role || !envs) {
      return host.Complete(s.run_id, StepOutcome::Failed("env_error", "role '" + s.step.role +
                                                                          "': no environment '" + s.role.tools_from + "'"));
    }
    envs->ListTools(EnvSpecFor(*env_role), [this, &host, call = std::move(call),
                                             body = std::move(*body)](StatusOr<Json> tools) mutable {
      if (!tools.ok()) {
        return host.Complete(call.run_id, StepOutcome::Failed("env_error", "listing the tools of step '" + call.step +
                                                                               "': " + tools.status().message()));
      }
      Json listed = OpenAiTools(*tools);
      if (!listed.empty()) {
        if (!body.contains("tools") || !body["tools"].is_array()) body["tools"] = Json::array();
        for (auto& t : listed) body["tools"].push_back(std::move(t));
      }
      Submit(host, std::move(call), std::move(body));
    });
  }

 private:
  struct Call {
    uint64_t run_id;
    std::string step, role, model;
    bool conversation;
    int64_t start_us;
  };

  static void Submit(AgentHost& host, Call call, Json body) {
    uint64_t run_id = call.run_id;
    std::string model = call.model;
    host.CallLlm(run_id, model, std::move(body), [&host, call = std::move(call)](llm::ChatResult& res) {
      if (!res.status.ok() && res.outage) {
        // The model was unreachable for its whole outage_s: not this task's
        // doing. Its owner admits it again (free) when the model is back.
        return host.Complete(call.run_id, StepOutcome::Lost("llm_outage", "step '" + call.step + "' model '" +
                                                                              call.model + "': " + res.status.ToString()));
      }
      if (!res.status.ok()) {
        return host.Complete(call.run_id,
                             StepOutcome::Failed("llm_error", "step '" + call.step + "' model '" + call.model +
                                                                  "': " + res.status.ToString() +
                                                                  (res.error_body.empty() ? "" : " (" + res.error_body + ")")));
      }
      auto turn = std::make_shared<wire::Turn>(
          TurnFrom(res, call.step, call.role, call.conversation, call.model, call.start_us, host.clock().WallMicros()));
      bool conversation = call.conversation;
      host.Complete(call.run_id, StepOutcome::Continue(), [turn, conversation](wire::Task& task) {
        task.counters["tokens"] += turn->prompt_tokens + turn->completion_tokens;
        task.history.push_back(std::move(*turn));
        if (conversation) task.counters["turns"]++;
        task.counters["llm_calls"]++;
      });
    });
  }
};

}  // namespace

void RegisterLlmAgent(AgentRegistry* registry) { registry->Register("llm", std::make_unique<LlmAgent>()); }

}  // namespace matrix::worker
