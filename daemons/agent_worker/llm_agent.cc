// The llm agent: a chat completion built from the role's templates and the
// task's history, with the pipeline's tools and those its environment lists
// (tools_from). The answer, its tool calls included, becomes a turn.
#include <cstdlib>
#include <optional>

#include "common/base/utf8.h"
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

// The token-level data of an answer, when the model was asked for it:
// logprobs (and alternatives) per completion token, and token ids as vLLM
// returns them (choices[0].token_ids and prompt_token_ids, or tokens written
// "token_id:N" under return_tokens_as_token_ids).
Json TokenData(const Json& raw) {
  Json out = Json::object();
  if (!raw.is_object() || !raw.contains("choices") || !raw["choices"].is_array() || raw["choices"].empty())
    return out;
  const Json& choice = raw["choices"][0];
  if (!choice.is_object()) return out;
  if (choice.contains("logprobs") && choice["logprobs"].is_object()) {
    const Json& lp = choice["logprobs"];
    if (lp.contains("content") && lp["content"].is_array()) {
      Json values = Json::array(), tops = Json::array(), ids = Json::array();
      bool any_top = false, all_ids = true;
      for (const auto& t : lp["content"]) {
        if (!t.is_object()) continue;
        values.push_back(t.contains("logprob") && t["logprob"].is_number() ? t["logprob"] : Json(nullptr));
        const std::string token = t.contains("token") && t["token"].is_string() ? t["token"].get<std::string>() : "";
        if (token.rfind("token_id:", 0) == 0) {
          ids.push_back(std::strtoll(token.c_str() + 9, nullptr, 10));
        } else {
          all_ids = false;
        }
        Json top = Json::array();
        if (t.contains("top_logprobs") && t["top_logprobs"].is_array())
          for (const auto& alt : t["top_logprobs"])
            if (alt.is_object()) top.push_back({{"token", alt.value("token", "")}, {"logprob", alt.value("logprob", 0.0)}});
        any_top |= !top.empty();
        tops.push_back(std::move(top));
      }
      out["logprobs"] = std::move(values);
      if (any_top) out["top_logprobs"] = std::move(tops);
      if (all_ids && !ids.empty()) out["token_ids"] = std::move(ids);
    }
  }
  if (choice.contains("token_ids") && choice["token_ids"].is_array()) out["token_ids"] = choice["token_ids"];
  if (raw.contains("prompt_token_ids") && raw["prompt_token_ids"].is_array())
    out["prompt_token_ids"] = raw["prompt_token_ids"];
  return out;
}

// A structured answer checked against the role's response_format: JSON (the
// whole text, or a fenced ```json block in it), an object for json_object,
// matching the schema for json_schema.
Status CheckStructured(const config::RoleConfig& role, const std::string& content) {
  std::string_view text = content;
  if (size_t fence = text.find("```"); fence != std::string_view::npos) {
    size_t start = text.find('\n', fence);
    size_t end = start == std::string_view::npos ? start : text.find("```", start);
    if (end != std::string_view::npos) text = text.substr(start + 1, end - start - 1);
  }
  Json parsed = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return InvalidArgument("the answer is not valid JSON (" + std::to_string(content.size()) + " bytes: " +
                           Printable(content, 120) + ")");
  }
  if (role.response_schema) return role.response_schema->Validate(parsed);
  if (!parsed.is_object()) return InvalidArgument("the answer is JSON but not an object");
  return Status::Ok();
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
  // What its templates read, and every turn when it carries the conversation.
  unsigned ContextParts(const config::RoleConfig& role) const override {
    unsigned parts = role.conversation ? static_cast<unsigned>(kCtxTurns) : 0u;
    if (role.system) parts |= ContextPartsFor(role.system->source());
    if (role.prompt) parts |= ContextPartsFor(role.prompt->source());
    return parts;
  }

  void Run(const StepContext& s, AgentHost& host) const override {
    const config::Pipeline& pipeline = host.pipeline();
    auto body = BuildChatBody(pipeline, s.step.role, s.role, s.view, s.resolved, s.ctx, s.prompts);
    if (!body.ok()) {
      return host.Complete(s.run_id, StepOutcome::Failed("prompt_error", "step '" + s.step.name + "': " +
                                                                               body.status().message()));
    }
    Call call{s.run_id, s.step.name, s.step.role, s.role.model, s.role.conversation, host.clock().WallMicros(), &s.role};
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
        Json& own = body.params["tools"];
        if (!own.is_array()) own = Json::array();
        for (auto& t : listed) own.push_back(std::move(t));
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
    const config::RoleConfig* config = nullptr;
    int format_attempts = 0;  // answers refused by the response_format check so far
    int64_t refused_prompt_tokens = 0, refused_completion_tokens = 0;
  };

  static void Submit(AgentHost& host, Call call, ChatBody body) {
    uint64_t run_id = call.run_id;
    std::string model = call.model;
    // Kept for a retry of a structured answer that did not check out.
    std::optional<ChatBody> retry_body;
    if (call.config && !call.config->response_format.is_null()) retry_body = body;
    host.CallLlm(run_id, model, std::move(body), [&host, call = std::move(call),
                                                   retry_body = std::move(retry_body)](llm::ChatResult& res) mutable {
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
      Status format = Status::Ok();
      if (retry_body && res.tool_calls.is_null()) format = CheckStructured(*call.config, res.content);
      if (!format.ok() && call.format_attempts < call.config->format_retries) {
        // Asked again with another seed: the same request would give the same answer.
        ++call.format_attempts;
        call.refused_prompt_tokens += res.prompt_tokens;
        call.refused_completion_tokens += res.completion_tokens;
        Json& params = retry_body->params;
        params["seed"] = (params.value("seed", int64_t{0}) + 7919) & 0x7fffffff;
        return Submit(host, std::move(call), std::move(*retry_body));
      }
      res.prompt_tokens += call.refused_prompt_tokens;
      res.completion_tokens += call.refused_completion_tokens;
      auto turn = std::make_shared<wire::Turn>(
          TurnFrom(res, call.step, call.role, call.conversation, call.model, call.start_us, host.clock().WallMicros()));
      Json extra = TokenData(res.raw);
      if (call.format_attempts > 0) extra["format_retries"] = call.format_attempts;
      if (!format.ok()) extra["format_error"] = format.message();
      if (!extra.empty()) turn->extra = DumpJson(extra);
      // A refused answer is kept in the record too, with why it was refused.
      const bool counts_as_turn = call.conversation && format.ok();
      StepOutcome outcome = format.ok() ? StepOutcome::Continue()
                                        : StepOutcome::Failed("invalid_output",
                                                              "step '" + call.step + "' model '" + call.model + "': " +
                                                                  format.message() + " (after " +
                                                                  std::to_string(call.format_attempts + 1) + " answers)");
      host.Complete(call.run_id, std::move(outcome), [turn, counts_as_turn](wire::Task& task) {
        task.counters["tokens"] += turn->prompt_tokens + turn->completion_tokens;
        task.history.push_back(std::move(*turn));
        if (counts_as_turn) task.counters["turns"]++;
        task.counters["llm_calls"]++;
      });
    });
  }
};

}  // namespace

void RegisterLlmAgent(AgentRegistry* registry) { registry->Register("llm", std::make_unique<LlmAgent>()); }

}  // namespace matrix::worker
