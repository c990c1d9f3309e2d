#include "daemons/agent_worker/agents.h"

#include <algorithm>
#include <unordered_set>

#include "common/config/pipeline.h"

namespace matrix::worker {

using config::RoleType;

bool IsTerminal(const std::string& target) {
  return target == "done" || target == "failed" || target == "filtered";
}

unsigned RouteContextParts(const config::StepConfig& step) {
  unsigned parts = 0;
  for (const auto& [var, expr] : step.set) parts |= ContextPartsFor(expr.text()) | kCtxVars;
  for (const auto& t : step.next)
    if (t.cond) parts |= ContextPartsFor(t.cond->text());
  return parts;
}

namespace {

StatusOr<std::string> RenderPrompt(const config::Template& tmpl, const Json& ctx, PromptMemo* prompts) {
  if (prompts == nullptr) return tmpl.Render(ctx);
  auto kept = prompts->find(&tmpl);
  if (kept != prompts->end() && kept->second) return *kept->second;
  MATRIX_ASSIGN_OR_RETURN(std::string text, tmpl.Render(ctx));
  if (kept == prompts->end()) {
    const bool input_only = (ContextPartsFor(tmpl.source()) & ~static_cast<unsigned>(kCtxInput)) == 0;
    prompts->emplace(&tmpl, input_only ? std::optional<std::string>(text) : std::nullopt);
  }
  return text;
}

}  // namespace

bool PromptsKept(const config::RoleConfig& role, const PromptMemo& prompts) {
  auto kept = [&](const std::optional<config::Template>& t) {
    if (!t) return true;
    auto it = prompts.find(&*t);
    return it != prompts.end() && it->second.has_value();
  };
  return kept(role.system) && kept(role.prompt);
}

namespace {

// One chat message, written straight as JSON: {"role":..,"content":..} and
// the tool members a conversation needs.
void AppendMessage(std::string* out, const char* role, const std::string* content,
                   const std::string* tool_call_id = nullptr, const std::vector<wire::ToolCall>* calls = nullptr) {
  if (out->size() > 1) out->push_back(',');  // after "[" and an earlier message
  out->append("{\"role\":\"").append(role).append("\",\"content\":");
  if (content) AppendJsonString(out, *content);
  else out->append("null");
  if (tool_call_id) {
    out->append(",\"tool_call_id\":");
    AppendJsonString(out, *tool_call_id);
  }
  if (calls) {
    out->append(",\"tool_calls\":[");
    for (size_t i = 0; i < calls->size(); ++i) {
      const wire::ToolCall& c = (*calls)[i];
      out->append(i == 0 ? "{\"id\":" : ",{\"id\":");
      AppendJsonString(out, c.id);
      out->append(",\"type\":\"function\",\"function\":{\"name\":");
      AppendJsonString(out, c.name);
      out->append(",\"arguments\":");
      AppendJsonString(out, c.arguments);
      out->append("}}");
    }
    out->push_back(']');
  }
  out->push_back('}');
}

}  // namespace

StatusOr<ChatBody> BuildChatBody(const config::Pipeline& pipeline, const std::string& role_name,
                                 const config::RoleConfig& role, const wire::Task& task,
                                 const Resolved& resolved, const Json& ctx, PromptMemo* prompts) {
  ChatBody out;
  std::string& messages = out.messages;
  messages.reserve(1024);
  messages.push_back('[');
  if (role.system) {
    MATRIX_ASSIGN_OR_RETURN(std::string system, RenderPrompt(*role.system, ctx, prompts));
    AppendMessage(&messages, "system", &system);
  }
  if (role.prompt) {
    MATRIX_ASSIGN_OR_RETURN(std::string prompt, RenderPrompt(*role.prompt, ctx, prompts));
    AppendMessage(&messages, "user", &prompt);
  }
  if (role.conversation) {
    // Tool calls and their results are seen only by the role that made them.
    std::unordered_set<std::string> own_calls;
    for (const auto& turn : task.history) {
      if (!turn.conversation) continue;
      const std::string* text = ContentOf(turn.content, resolved);
      if (!text) return Unavailable("content of an earlier turn is unavailable");
      bool own = turn.role == role_name;
      if (!turn.tool_call_id.empty()) {
        if (own_calls.count(turn.tool_call_id)) AppendMessage(&messages, "tool", text, &turn.tool_call_id);
        continue;
      }
      if (!turn.tool_calls.empty()) {
        if (!own) continue;
        for (const auto& c : turn.tool_calls) own_calls.insert(c.id);
        AppendMessage(&messages, "assistant", text->empty() ? nullptr : text, nullptr, &turn.tool_calls);
        continue;
      }
      AppendMessage(&messages, own ? "assistant" : "user", text);
    }
  }
  if (messages.size() == 1) return InvalidArgument("role " + role_name + " produced no messages");
  messages.push_back(']');
  Json& body = out.params;
  if (const config::ModelConfig* model = pipeline.Model(role.model)) {
    if (model->sampling.is_object()) body.update(model->sampling);
  }
  if (role.sampling.is_object()) body.update(role.sampling);
  if (role.tools.is_array() && !role.tools.empty()) body["tools"] = role.tools;
  if (!role.tool_choice.is_null()) {
    const Json& tc = role.tool_choice;
    bool keyword = tc.is_string() && (tc == "auto" || tc == "none" || tc == "required");
    body["tool_choice"] = tc.is_string() && !keyword
                              ? Json{{"type", "function"}, {"function", {{"name", tc.get<std::string>()}}}}
                              : tc;
  }
  if (!role.response_format.is_null()) body["response_format"] = role.response_format;
  if (const config::ModelConfig* model = pipeline.Model(role.model)) {
    if (model->logprobs) body["logprobs"] = true;
    if (model->top_logprobs > 0) body["top_logprobs"] = model->top_logprobs;
    if (model->token_ids) body["return_token_ids"] = true;
  }
  body.erase("messages");  // they are out.messages, whatever the sampling said
  // The step's number, not the hop's: the same seed wherever the steps ran.
  if (!body.contains("seed")) {
    auto steps = task.counters.find("steps");
    const int64_t step = steps == task.counters.end() ? 0 : steps->second;
    body["seed"] = (task.seed + static_cast<uint64_t>(step)) & 0x7fffffff;
  }
  return out;
}

namespace {

std::string AsText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return DumpJson(v);
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Follows a dotted path ("scores.overall", "items.0") into a JSON value.
Json JsonPath(const Json& obj, const std::string& path) {
  const Json* cur = &obj;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur->is_object() && cur->contains(key)) {
      cur = &(*cur)[key];
    } else if (cur->is_array() && !key.empty() && key.size() < 9 &&
               std::all_of(key.begin(), key.end(), ::isdigit) && std::stoul(key) < cur->size()) {
      cur = &(*cur)[std::stoul(key)];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) return *cur;
    start = dot + 1;
  }
}

}  // namespace

namespace {

unsigned ExprParts(const std::optional<config::Expr>& e) { return e ? ContextPartsFor(e->text()) : 0u; }

class NoopAgent final : public Agent {
 public:
  bool EndsInRun(const config::RoleConfig&) const override { return true; }
  unsigned ContextParts(const config::RoleConfig&) const override { return 0; }
  void Run(const StepContext& s, AgentHost& host) const override { host.Complete(s.run_id, StepOutcome::Continue()); }
};

class ExtractAgent final : public Agent {
 public:
  bool EndsInRun(const config::RoleConfig&) const override { return true; }
  unsigned ContextParts(const config::RoleConfig& role) const override {
    return role.from ? ExprParts(role.from) : static_cast<unsigned>(kCtxLast);
  }
  void Run(const StepContext& s, AgentHost& host) const override {
    const config::RoleConfig& role = s.role;
    wire::Task& task = s.task;
    // Before the first conversation turn `last` is null: nothing to extract from.
    Json source = s.ctx.contains("last") && s.ctx["last"].is_object() ? s.ctx["last"]["content"] : Json(nullptr);
    if (role.from) {
      auto v = role.from->Eval(s.ctx);
      if (!v.ok()) return host.Complete(s.run_id, RoleError(s, v.status()));
      source = *v;
    }
    std::string text = AsText(source);
    if (role.json) {
      // The first JSON object in the text (models often wrap it in prose).
      size_t open = text.find('{'), close = text.rfind('}');
      Json parsed = open != std::string::npos && close > open
                        ? Json::parse(text.substr(open, close - open + 1), nullptr, false)
                        : Json(nullptr);
      if (parsed.is_discarded() || !parsed.is_object()) {
        for (const auto& [var, path] : role.fields) SetVar(task, var, nullptr);
        if (!role.var.empty()) SetVar(task, role.var, nullptr);
        return host.Complete(s.run_id, StepOutcome::Continue());
      }
      for (const auto& [var, path] : role.fields) SetVar(task, var, JsonPath(parsed, path));
      if (!role.var.empty()) SetVar(task, role.var, parsed);
      return host.Complete(s.run_id, StepOutcome::Continue());
    }
    Json value = nullptr;
    if (role.regex) {
      std::string_view capped = text;
      if (capped.size() > 1'000'000) capped = capped.substr(capped.size() - 1'000'000);
      // The last match wins: models restate the answer at the end.
      role.regex->FindAll(capped, [&](const config::Regex::Match& match) {
        value = std::string(match.groups.size() > 1 && match.groups[1] ? *match.groups[1] : match.whole());
      });
    } else {
      value = text;
    }
    SetVar(task, role.var, value);
    host.Complete(s.run_id, StepOutcome::Continue());
  }
};

class CompareAgent final : public Agent {
 public:
  bool EndsInRun(const config::RoleConfig&) const override { return true; }
  unsigned ContextParts(const config::RoleConfig& role) const override {
    return ExprParts(role.left) | ExprParts(role.right);
  }
  void Run(const StepContext& s, AgentHost& host) const override {
    const config::RoleConfig& role = s.role;
    if (!role.left || !role.right)
      return host.Complete(s.run_id, RoleError(s, InvalidArgument("compare role needs left and right")));
    auto l = role.left->Eval(s.ctx);
    if (!l.ok()) return host.Complete(s.run_id, RoleError(s, l.status()));
    auto r = role.right->Eval(s.ctx);
    if (!r.ok()) return host.Complete(s.run_id, RoleError(s, r.status()));
    bool equal;
    if (l->is_null() || r->is_null()) {
      equal = false;
    } else if (l->is_string() || r->is_string()) {
      std::string a = AsText(*l), b = AsText(*r);
      if (role.ignore_case) {
        a = Lower(a);
        b = Lower(b);
      }
      equal = a == b;
    } else {
      equal = *l == *r;
    }
    SetVar(s.task, role.var, equal);
    host.Complete(s.run_id, StepOutcome::Continue());
  }
};

class FilterAgent final : public Agent {
 public:
  bool EndsInRun(const config::RoleConfig&) const override { return true; }
  unsigned ContextParts(const config::RoleConfig& role) const override { return ExprParts(role.condition); }
  void Run(const StepContext& s, AgentHost& host) const override {
    if (!s.role.condition) return host.Complete(s.run_id, StepOutcome::Continue());
    auto keep = s.role.condition->EvalBool(s.ctx);
    if (!keep.ok()) return host.Complete(s.run_id, RoleError(s, keep.status()));
    host.Complete(s.run_id, *keep ? StepOutcome::Continue() : StepOutcome::Filtered());
  }
};

// A fixed turn, spoken as `as` (a greeting the conversation starts with).
class MessageAgent final : public Agent {
 public:
  bool EndsInRun(const config::RoleConfig&) const override { return true; }
  unsigned ContextParts(const config::RoleConfig& role) const override {
    return role.content && role.content->source().find("{{") == std::string::npos ? 0u
                                                                                   : static_cast<unsigned>(kCtxAll);
  }
  void Run(const StepContext& s, AgentHost& host) const override {
    auto text = s.role.content->Render(s.ctx);
    if (!text.ok()) return host.Complete(s.run_id, StepOutcome::Failed("prompt_error", text.status().message()));
    wire::Turn turn;
    turn.step = s.step.name;
    turn.role = s.role.as;
    turn.kind = "message";
    turn.content.text = std::move(*text);
    turn.start_us = turn.end_us = host.clock().WallMicros();
    s.task.history.push_back(std::move(turn));
    s.task.counters["turns"]++;
    host.Complete(s.run_id, StepOutcome::Continue());
  }
};

}  // namespace

StepOutcome RoleError(const StepContext& s, const Status& status) {
  return StepOutcome::Failed("role_error", "step '" + s.step.name + "': " + status.message());
}

// reward: an expression here; the environment's reward in env_agents.cc.
void RunRewardExpr(const StepContext& s, AgentHost& host) {
  if (!s.role.expr) return host.Complete(s.run_id, RoleError(s, InvalidArgument("reward role needs expr")));
  auto v = s.role.expr->Eval(s.ctx);
  if (!v.ok()) return host.Complete(s.run_id, RoleError(s, v.status()));
  SetVar(s.task, s.role.var.empty() ? "reward" : s.role.var, *v);
  host.Complete(s.run_id, StepOutcome::Continue());
}

void RegisterLocalAgents(AgentRegistry* registry) {
  registry->Register("noop", std::make_unique<NoopAgent>());
  registry->Register("extract", std::make_unique<ExtractAgent>());
  registry->Register("compare", std::make_unique<CompareAgent>());
  registry->Register("filter", std::make_unique<FilterAgent>());
  registry->Register("message", std::make_unique<MessageAgent>());
}

const AgentRegistry& AgentRegistry::Builtin() {
  static const AgentRegistry* registry = [] {
    auto* r = new AgentRegistry();
    RegisterLocalAgents(r);
    RegisterLlmAgent(r);
    RegisterEnvAgents(r);
    return r;
  }();
  return *registry;
}

void AgentRegistry::Register(std::string type, std::unique_ptr<Agent> agent) {
  agents_[std::move(type)] = std::move(agent);
}

const Agent* AgentRegistry::Find(const std::string& type) const {
  auto it = agents_.find(type);
  return it == agents_.end() ? nullptr : it->second.get();
}

std::vector<std::string> AgentRegistry::Types() const {
  std::vector<std::string> out;
  for (const auto& [name, a] : agents_) out.push_back(name);
  return out;
}

const wire::ResourceLease* FindEnvLease(const wire::Task& task, const std::string& env_role) {
  const std::string kind = kEnvLeasePrefix + env_role;
  for (const auto& l : task.leases)
    if (l.kind == kind) return &l;
  return nullptr;
}

RouteDecision Route(const config::StepConfig& step, wire::Task& task, const Json& ctx_in) {
  const Json* ctx = &ctx_in;
  Json updated;
  if (!step.set.empty()) {
    updated = ctx_in;
    for (const auto& [var, expr] : step.set) {
      auto v = expr.Eval(updated);
      if (!v.ok()) return {"failed", "expression_error", v.status()};
      SetVar(task, var, *v);
      updated["vars"][var] = *v;
    }
    ctx = &updated;
  }
  for (const auto& t : step.next) {
    if (t.cond) {
      auto ok = t.cond->EvalBool(*ctx);
      if (!ok.ok()) return {"failed", "expression_error", ok.status()};
      if (!*ok) continue;
    }
    return {t.target, t.reason, Status::Ok()};
  }
  return {"failed", "no_transition",
          InvalidArgument("no transition of step '" + step.name + "' matched")};
}

}  // namespace matrix::worker
