#include "daemons/agent_worker/agents.h"

#include <algorithm>
#include <regex>

#include "common/config/pipeline.h"

namespace matrix::worker {

using config::RoleType;

bool IsTerminal(const std::string& target) {
  return target == "done" || target == "failed" || target == "filtered";
}

unsigned RoleContextParts(const config::RoleConfig& role) {
  auto of = [](const std::optional<config::Expr>& e) { return e ? ContextPartsFor(e->text()) : 0u; };
  switch (role.type) {
    case RoleType::kNoop: return 0;
    case RoleType::kExtract: return role.from ? of(role.from) : static_cast<unsigned>(kCtxHistory);
    case RoleType::kCompare: return of(role.left) | of(role.right);
    case RoleType::kFilter: return of(role.condition);
    case RoleType::kReward: return of(role.expr);
    default: return kCtxAll;
  }
}

unsigned RouteContextParts(const config::StepConfig& step) {
  unsigned parts = 0;
  for (const auto& [var, expr] : step.set) parts |= ContextPartsFor(expr.text()) | kCtxVars;
  for (const auto& t : step.next)
    if (t.cond) parts |= ContextPartsFor(t.cond->text());
  return parts;
}

StatusOr<Json> BuildChatBody(const config::Pipeline& pipeline, const std::string& role_name,
                             const config::RoleConfig& role, const wire::Task& task,
                             const Resolved& resolved, const Json& ctx) {
  Json messages = Json::array();
  if (role.system) {
    MATRIX_ASSIGN_OR_RETURN(std::string system, role.system->Render(ctx));
    messages.push_back({{"role", "system"}, {"content", system}});
  }
  if (role.prompt) {
    MATRIX_ASSIGN_OR_RETURN(std::string prompt, role.prompt->Render(ctx));
    messages.push_back({{"role", "user"}, {"content", prompt}});
  }
  if (role.conversation) {
    for (const auto& turn : task.history) {
      if (!turn.conversation) continue;
      bool missing = false;
      std::string text = ContentText(turn.content, resolved, &missing);
      if (missing) return Unavailable("content of an earlier turn is unavailable");
      bool own = turn.role == role_name;
      if (own && !turn.tool_calls.empty()) {
        Json calls = Json::array();
        for (const auto& c : turn.tool_calls)
          calls.push_back({{"id", c.id},
                           {"type", "function"},
                           {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
        messages.push_back({{"role", "assistant"}, {"content", text}, {"tool_calls", calls}});
      } else if (!turn.tool_call_id.empty()) {
        messages.push_back({{"role", "tool"}, {"tool_call_id", turn.tool_call_id}, {"content", text}});
      } else {
        messages.push_back({{"role", own ? "assistant" : "user"}, {"content", text}});
      }
    }
  }
  if (messages.empty()) return InvalidArgument("role " + role_name + " produced no messages");
  Json body = Json::object();
  if (const config::ModelConfig* model = pipeline.Model(role.model)) {
    if (model->sampling.is_object()) body.update(model->sampling);
  }
  if (role.sampling.is_object()) body.update(role.sampling);
  body["messages"] = std::move(messages);
  if (!body.contains("seed")) body["seed"] = (task.seed + task.hops) & 0x7fffffff;
  return body;
}

namespace {

std::string AsText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump();
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

LocalOutcome RunLocalRole(const config::RoleConfig& role, wire::Task& task, const Json& ctx) {
  LocalOutcome out;
  switch (role.type) {
    case RoleType::kNoop:
      return out;
    case RoleType::kExtract: {
      Json source = ctx.contains("last") ? ctx["last"]["content"] : Json(nullptr);
      if (role.from) {
        auto v = role.from->Eval(ctx);
        if (!v.ok()) return {v.status()};
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
          return out;
        }
        for (const auto& [var, path] : role.fields) SetVar(task, var, JsonPath(parsed, path));
        if (!role.var.empty()) SetVar(task, role.var, parsed);
        return out;
      }
      Json value = nullptr;
      if (role.regex) {
        std::smatch m;
        std::string capped = text.size() > 1'000'000 ? text.substr(text.size() - 1'000'000) : text;
        // The last match wins: models restate the answer at the end.
        for (auto it = std::sregex_iterator(capped.begin(), capped.end(), *role.regex);
             it != std::sregex_iterator(); ++it) {
          const std::smatch& match = *it;
          value = match.size() > 1 && match[1].matched ? match[1].str() : match[0].str();
        }
      } else {
        value = text;
      }
      SetVar(task, role.var, value);
      return out;
    }
    case RoleType::kCompare: {
      if (!role.left || !role.right) return {InvalidArgument("compare role needs left and right")};
      auto l = role.left->Eval(ctx);
      if (!l.ok()) return {l.status()};
      auto r = role.right->Eval(ctx);
      if (!r.ok()) return {r.status()};
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
      SetVar(task, role.var, equal);
      return out;
    }
    case RoleType::kFilter: {
      if (!role.condition) return out;
      auto keep = role.condition->EvalBool(ctx);
      if (!keep.ok()) return {keep.status()};
      out.filtered = !*keep;
      return out;
    }
    case RoleType::kReward: {
      if (!role.expr) return {InvalidArgument("reward role needs expr")};
      auto v = role.expr->Eval(ctx);
      if (!v.ok()) return {v.status()};
      SetVar(task, role.var.empty() ? "reward" : role.var, *v);
      return out;
    }
    default:
      return {FailedPrecondition("agent type of this role is not run by this worker")};
  }
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
