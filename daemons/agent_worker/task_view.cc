#include "daemons/agent_worker/task_view.h"

#include <algorithm>
#include <charconv>

namespace matrix::worker {

const std::string* ContentOf(const wire::Content& content, const Resolved& resolved) {
  if (!content.ref) return &content.text;
  auto it = resolved.find(content.ref->id);
  return it == resolved.end() ? nullptr : &it->second;
}

std::string ContentText(const wire::Content& content, const Resolved& resolved, bool* missing) {
  const std::string* text = ContentOf(content, resolved);
  if (!text && missing) *missing = true;
  return text ? *text : std::string();
}

std::vector<wire::ObjectRef> CollectRefs(const wire::Task& task) {
  std::vector<wire::ObjectRef> refs;
  if (task.input.ref) refs.push_back(*task.input.ref);
  for (const auto& turn : task.history)
    if (turn.content.ref) refs.push_back(*turn.content.ref);
  return refs;
}

Json VarValue(const wire::Task& task, const std::string& name) {
  auto it = task.vars.find(name);
  if (it == task.vars.end()) return nullptr;
  return Json::parse(it->second, nullptr, /*allow_exceptions=*/false);
}

void SetVar(wire::Task& task, const std::string& name, const Json& value) {
  task.vars[name] = DumpJson(value);
}

namespace {

Json InputJson(const wire::Task& task, const Resolved& resolved) {
  bool missing = false;
  std::string text = ContentText(task.input, resolved, &missing);
  if (missing) return nullptr;
  Json input = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  return input.is_discarded() ? Json(text) : input;
}

// A turn as templates and routes see it (the record writes its own, fuller one).
Json TurnJson(const wire::Turn& t, const Resolved& resolved) {
  bool missing = false;
  Json j = {{"step", t.step},
            {"role", t.role},
            {"kind", t.kind},
            {"conversation", t.conversation},
            {"content", ContentText(t.content, resolved, &missing)},
            {"finish_reason", t.finish_reason}};
  if (missing) j["content"] = nullptr;
  if (!t.tool_calls.empty()) {
    Json calls = Json::array();
    for (const auto& c : t.tool_calls)
      calls.push_back({{"id", c.id}, {"name", c.name}, {"arguments", c.arguments}});
    j["tool_calls"] = calls;
  }
  if (!t.tool_call_id.empty()) j["tool_call_id"] = t.tool_call_id;
  return j;
}

Json VarsJson(const wire::Task& task) {
  Json vars = Json::object();
  for (const auto& [k, v] : task.vars) {
    Json value = Json::parse(v, nullptr, false);
    vars[k] = value.is_discarded() ? Json(v) : value;
  }
  return vars;
}

}  // namespace

unsigned ContextPartsFor(const std::string& text) {
  unsigned parts = 0;
  auto has = [&](const char* word) {
    size_t n = std::char_traits<char>::length(word);
    for (size_t pos = text.find(word); pos != std::string::npos; pos = text.find(word, pos + 1)) {
      bool left = pos == 0 || !(std::isalnum(static_cast<unsigned char>(text[pos - 1])) || text[pos - 1] == '_' ||
                                text[pos - 1] == '.');
      bool right = pos + n >= text.size() ||
                   !(std::isalnum(static_cast<unsigned char>(text[pos + n])) || text[pos + n] == '_');
      if (left && right) return true;
    }
    return false;
  };
  if (has("input")) parts |= kCtxInput;
  if (has("vars") || has("branches")) parts |= kCtxVars;
  if (has("counters")) parts |= kCtxCounters;
  if (has("history") || has("conversation")) parts |= kCtxHistory;
  if (has("last")) parts |= kCtxLast;
  if (has("last_turn")) parts |= kCtxLastTurn;
  if (has("task") || has("step")) parts |= kCtxTask;
  return parts;
}

bool ReadsArchive(const wire::Task& task, unsigned parts) {
  if (task.archive.empty()) return false;
  if (parts & (kCtxHistory | kCtxTurns)) return true;
  if ((parts & kCtxLastTurn) && task.history.empty()) return true;
  if (parts & kCtxLast)
    return std::none_of(task.history.begin(), task.history.end(), [](const wire::Turn& t) { return t.conversation; });
  return false;
}

Json BuildContext(const wire::Task& task, const Resolved& resolved, unsigned parts) {
  Json ctx = Json::object();
  if (parts & kCtxInput) ctx["input"] = InputJson(task, resolved);
  if (parts & kCtxVars) {
    ctx["vars"] = VarsJson(task);
    if (ctx["vars"].contains("branches")) ctx["branches"] = ctx["vars"]["branches"];
  }
  if (parts & kCtxCounters) {
    Json counters = Json::object();
    for (const auto& [k, v] : task.counters) counters[k] = v;
    ctx["counters"] = std::move(counters);
  }
  if (parts & kCtxTask) {
    ctx["task"] = {{"id", task.task_id},
                   {"row", task.row},
                   {"trial", task.trial},
                   {"attempt", task.attempt},
                   {"partition", task.partition}};
    if (task.branch)
      ctx["task"]["branch"] = {{"index", task.branch->index}, {"count", task.branch->count},
                               {"parent", task.branch->parent_task_id}};
    ctx["step"] = task.step;
  }
  if (parts & kCtxHistory) {
    Json history = Json::array();
    Json conversation = Json::array();
    for (const auto& t : task.history) {
      Json j = TurnJson(t, resolved);
      if (t.conversation) conversation.push_back(j);
      history.push_back(std::move(j));
    }
    ctx["history"] = std::move(history);
    ctx["conversation"] = std::move(conversation);
  }
  // The newest turns, found from the end: only they are turned into JSON.
  if (parts & kCtxLast) {
    auto it = std::find_if(task.history.rbegin(), task.history.rend(), [](const wire::Turn& t) { return t.conversation; });
    ctx["last"] = it == task.history.rend() ? Json(nullptr) : TurnJson(*it, resolved);
  }
  if (parts & kCtxLastTurn)
    ctx["last_turn"] = task.history.empty() ? Json(nullptr) : TurnJson(task.history.back(), resolved);
  return ctx;
}

namespace {

void AppendInt(std::string* out, int64_t v) {
  char buf[24];
  auto end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
  out->append(buf, end);
}

// Microseconds as seconds with six decimals ("%.6f"), in integer arithmetic.
void AppendSeconds(std::string* out, int64_t us) {
  uint64_t mag = us < 0 ? 0 - static_cast<uint64_t>(us) : static_cast<uint64_t>(us);
  if (us < 0) out->push_back('-');
  char buf[24];
  out->append(buf, std::to_chars(buf, buf + sizeof(buf), mag / 1'000'000).ptr);
  char frac[7] = {'.', '0', '0', '0', '0', '0', '0'};
  uint64_t rest = mag % 1'000'000;
  for (int i = 6; i >= 1; --i, rest /= 10) frac[i] = static_cast<char>('0' + rest % 10);
  out->append(frac, sizeof(frac));
}

// A value kept as JSON text (a var, a turn's extra) that Json::accept()s,
// appended as one line of JSON: as it is when it already is one line.
void AppendValidJson(std::string* out, const std::string& text) {
  if (text.find_first_of("\n\r") == std::string::npos) {
    out->append(text);
  } else {
    out->append(DumpJson(Json::parse(text)));
  }
}

// Text that may be JSON (a var, the input row): the JSON value when it is
// one, else the string it is (what InputJson and VarsJson give).
void AppendJsonOrString(std::string* out, const std::string& text) {
  if (!text.empty() && Json::accept(text)) AppendValidJson(out, text);
  else AppendJsonString(out, text);
}

// Writes JSON objects field by field, in the order the keys are given (the
// record's own fields sorted, as a Json object prints them), without
// building a Json tree.
class ObjectWriter {
 public:
  explicit ObjectWriter(std::string* out) : out_(out) { out_->push_back('{'); }
  // A key the program names: plain ASCII, no escaping needed.
  std::string* Key(const char* name) {
    if (!first_) out_->push_back(',');
    first_ = false;
    out_->push_back('"');
    out_->append(name);
    out_->append("\":");
    return out_;
  }
  // A key from data (a var's or counter's name).
  std::string* Key(const std::string& name) {
    if (!first_) out_->push_back(',');
    first_ = false;
    AppendJsonString(out_, name);
    out_->push_back(':');
    return out_;
  }
  void Str(const char* name, const std::string& v) { AppendJsonString(Key(name), v); }
  void Int(const char* name, int64_t v) { AppendInt(Key(name), v); }
  void Seconds(const char* name, int64_t us) { AppendSeconds(Key(name), us); }
  void Bool(const char* name, bool v) { Key(name)->append(v ? "true" : "false"); }
  void End() { out_->push_back('}'); }

 private:
  std::string* out_;
  bool first_ = true;
};

void AppendTurn(std::string* out, const wire::Turn& t, const Resolved& resolved) {
  const std::string* content = ContentOf(t.content, resolved);
  ObjectWriter o(out);
  o.Int("attempts", t.attempts);
  if (content) o.Str("content", *content);
  else o.Key("content")->append("null");
  if (!content) o.Str("content_error", "object " + std::to_string(t.content.ref->id) + " unavailable");
  o.Bool("conversation", t.conversation);
  o.Int("end_us", t.end_us);
  o.Str("endpoint", t.endpoint);
  if (!t.extra.empty() && Json::accept(t.extra)) AppendValidJson(o.Key("extra"), t.extra);
  o.Str("finish_reason", t.finish_reason);
  o.Str("kind", t.kind);
  o.Str("model", t.model);
  o.Str("role", t.role);
  o.Int("start_us", t.start_us);
  o.Str("step", t.step);
  if (!t.tool_call_id.empty()) o.Str("tool_call_id", t.tool_call_id);
  if (!t.tool_calls.empty()) {
    std::string* calls = o.Key("tool_calls");
    calls->push_back('[');
    for (size_t i = 0; i < t.tool_calls.size(); ++i) {
      if (i > 0) calls->push_back(',');
      ObjectWriter c(calls);
      c.Str("arguments", t.tool_calls[i].arguments);
      c.Str("id", t.tool_calls[i].id);
      c.Str("name", t.tool_calls[i].name);
      c.End();
    }
    calls->push_back(']');
  }
  ObjectWriter usage(o.Key("usage"));
  usage.Int("completion_tokens", t.completion_tokens);
  usage.Int("prompt_tokens", t.prompt_tokens);
  usage.End();
  o.End();
}

// A record's fields other than input and spans, written straight as JSON
// text, in the order a Json object prints them; the closing brace is left
// off for the caller.
void AppendRecordHead(std::string* line, const wire::Task& task, const Resolved& resolved, int64_t finished_us,
                      bool with_turns) {
  int64_t prompt = 0, completion = 0;
  for (const auto& t : task.history) {
    prompt += t.prompt_tokens;
    completion += t.completion_tokens;
  }
  ObjectWriter o(line);
  o.Int("attempt", task.attempt);
  ObjectWriter counters(o.Key("counters"));
  for (const auto& [name, value] : task.counters) AppendInt(counters.Key(name), value);
  counters.End();
  o.Int("created_us", task.created_us);
  o.Key("duration_s")->append(DumpJson(Json((finished_us - task.created_us) / 1e6)));
  if (!task.error.empty()) o.Str("error", task.error);
  o.Int("finished_us", finished_us);
  o.Int("hops", task.hops);
  o.Int("partition", task.partition);
  o.Str("pipeline", task.pipeline);
  o.Str("reason", task.reason);
  o.Int("row", task.row);
  o.Str("run_id", task.run_id);
  o.Str("status", wire::TaskStatusName(task.status));
  o.Str("task_id", task.task_id);
  o.Int("trial", task.trial);
  if (with_turns) {
    std::string* turns = o.Key("turns");
    turns->push_back('[');
    for (size_t i = 0; i < task.history.size(); ++i) {
      if (i > 0) turns->push_back(',');
      AppendTurn(turns, task.history[i], resolved);
    }
    turns->push_back(']');
  }
  ObjectWriter usage(o.Key("usage"));
  usage.Int("completion_tokens", completion);
  usage.Int("prompt_tokens", prompt);
  usage.End();
  ObjectWriter vars(o.Key("vars"));
  for (const auto& [name, value] : task.vars) AppendJsonOrString(vars.Key(name), value);
  vars.End();
}

}  // namespace

std::string DroppedRecordLine(const wire::Task& task, int64_t finished_us) {
  std::string line;
  AppendRecordHead(&line, task, Resolved(), finished_us, /*with_turns=*/false);
  line.push_back('}');
  return line;
}

Json BuildRecord(const wire::Task& task, const Resolved& resolved, int64_t finished_us) {
  return Json::parse(RecordLine(task, resolved, finished_us));
}

std::string RecordLine(const wire::Task& task, const Resolved& resolved, int64_t finished_us) {
  std::string line;
  line.reserve(1024);
  AppendRecordHead(&line, task, resolved, finished_us, /*with_turns=*/true);
  // The input row as it is when it is JSON on one line.
  line.append(",\"input\":");
  const std::string* input = ContentOf(task.input, resolved);
  if (input) AppendJsonOrString(&line, *input);
  else line.append("null");
  line.append(",\"spans\":[");
  for (size_t i = 0; i < task.spans.size(); ++i) {
    const wire::Span& s = task.spans[i];
    if (i > 0) line.push_back(',');
    ObjectWriter o(&line);
    o.Str("step", s.step);
    o.Str("role", s.role);
    o.Str("worker", s.worker);
    o.Int("enqueue_us", s.enqueue_us);
    o.Int("start_us", s.start_us);
    o.Int("end_us", s.end_us);
    o.Seconds("queue_wait_s", s.start_us - s.enqueue_us);
    o.Seconds("handling_s", s.end_us - s.start_us);
    o.Int("prompt_tokens", s.prompt_tokens);
    o.Int("completion_tokens", s.completion_tokens);
    o.Str("endpoint", s.endpoint);
    o.Int("attempt", s.attempt);
    o.End();
  }
  line.append("]}");
  return line;
}

}  // namespace matrix::worker
