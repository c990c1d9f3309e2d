// `matrix export`: records -> SFT conversations, RL steps or a latency and
// token breakdown. See export_command.h for the formats.
#include "daemons/cli/export_command.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include "common/base/files.h"
#include "common/base/json.h"
#include "common/base/zstd_lines.h"
#include "common/config/pipeline.h"
#include "common/config/pipeline_loader.h"

namespace matrix::cli {
namespace {

// The partition files p<N>.jsonl and p<N>.jsonl.zst, in partition order.
std::vector<std::string> RecordFiles(const std::string& dir) {
  std::vector<std::pair<long, std::string>> found;
  DIR* d = opendir(dir.c_str());
  if (!d) return {};
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    const std::string base = IsZstdPath(name) ? name.substr(0, name.size() - 4) : name;
    if (base.size() < 8 || base[0] != 'p' || base.compare(base.size() - 6, 6, ".jsonl") != 0) continue;
    std::string digits = base.substr(1, base.size() - 7);
    if (digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    found.push_back({std::strtol(digits.c_str(), nullptr, 10), dir + "/" + name});
  }
  closedir(d);
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::string AsText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return DumpJson(v);
}

// The task input as one user message when no template says how.
std::string InputText(const Json& input) {
  if (input.is_string()) return input.get<std::string>();
  if (!input.is_object()) return DumpJson(input);
  for (const char* field : {"question", "prompt", "text", "input", "problem"}) {
    auto it = input.find(field);
    if (it == input.end() || !it->is_string()) continue;
    std::string text = it->get<std::string>();
    auto options = input.find("options");
    if (options != input.end() && options->is_array() && !options->empty() && options->size() <= 26) {
      text += "\n";
      char letter = 'A';
      for (const auto& o : *options) text += std::string(1, letter++) + ". " + AsText(o) + "\n";
    }
    return text;
  }
  return DumpJson(input);
}

bool IsLlmTurn(const Json& t) { return t.value("kind", "") == "llm"; }
bool InConversation(const Json& t) { return t.value("conversation", true); }

// A conversation turn as `agent` saw it (BuildChatBody's rules).
Json TurnMessage(const Json& turn, const std::string& agent) {
  const bool own = turn.value("role", "") == agent;
  const std::string content = AsText(turn.value("content", Json()));
  if (own && turn.contains("tool_calls") && turn["tool_calls"].is_array() && !turn["tool_calls"].empty()) {
    Json calls = Json::array();
    for (const auto& c : turn["tool_calls"])
      calls.push_back({{"id", c.value("id", "")},
                       {"type", "function"},
                       {"function", {{"name", c.value("name", "")}, {"arguments", c.value("arguments", "")}}}});
    return {{"role", "assistant"}, {"content", content}, {"tool_calls", calls}};
  }
  if (turn.contains("tool_call_id")) return {{"role", "tool"}, {"tool_call_id", turn["tool_call_id"]}, {"content", content}};
  return {{"role", own ? "assistant" : "user"}, {"content", content}};
}

// Renders roles' system and prompt templates against a record.
class Opening {
 public:
  explicit Opening(const config::Pipeline* pipeline) : pipeline_(pipeline) {}

  // The messages that open `role`'s request when it made turn `index` of
  // `record` (history before that turn as context).
  Json Messages(const Json& record, const std::string& role, size_t index) {
    Json out = Json::array();
    const config::RoleConfig* rc = pipeline_ ? pipeline_->Role(role) : nullptr;
    if (!rc) {
      out.push_back({{"role", "user"}, {"content", InputText(record.value("input", Json()))}});
      return out;
    }
    Json ctx = Context(record, index);
    if (rc->system) {
      auto text = rc->system->Render(ctx);
      if (text.ok()) out.push_back({{"role", "system"}, {"content", *text}});
    }
    if (rc->prompt) {
      auto text = rc->prompt->Render(ctx);
      out.push_back({{"role", "user"},
                     {"content", text.ok() ? *text : InputText(record.value("input", Json()))}});
    }
    return out;
  }

  bool conversation(const std::string& role) const {
    const config::RoleConfig* rc = pipeline_ ? pipeline_->Role(role) : nullptr;
    return rc ? rc->conversation : true;
  }

 private:
  // TaskView's context, rebuilt from the record as of turn `index`.
  static Json Context(const Json& record, size_t index) {
    Json history = Json::array(), conversation = Json::array();
    const Json& turns = record["turns"];
    for (size_t i = 0; i < index && i < turns.size(); ++i) {
      history.push_back(turns[i]);
      if (InConversation(turns[i])) conversation.push_back(turns[i]);
    }
    Json ctx = {{"input", record.value("input", Json())},
                {"vars", record.value("vars", Json::object())},
                {"counters", record.value("counters", Json::object())},
                {"task",
                 {{"id", record.value("task_id", "")},
                  {"row", record.value("row", 0)},
                  {"trial", record.value("trial", 0)},
                  {"attempt", record.value("attempt", 1)},
                  {"partition", record.value("partition", 0)}}},
                {"history", history},
                {"conversation", conversation}};
    ctx["last"] = conversation.empty() ? Json(nullptr) : conversation.back();
    ctx["last_turn"] = history.empty() ? Json(nullptr) : history.back();
    return ctx;
  }

  const config::Pipeline* pipeline_;
};

Json Reward(const Json& vars) {
  if (!vars.is_object()) return nullptr;
  auto reward = vars.find("reward");
  if (reward != vars.end()) {
    if (reward->is_number()) return *reward;
    if (reward->is_boolean()) return reward->get<bool>() ? 1 : 0;
  }
  auto correct = vars.find("correct");
  if (correct != vars.end()) {
    if (correct->is_boolean()) return correct->get<bool>() ? 1 : 0;
    if (correct->is_number()) return *correct;
  }
  return nullptr;
}

// SFT: one conversation per agent that spoke in it.
int64_t WriteSft(const Json& record, Opening& opening, std::ostream& out) {
  const Json& turns = record["turns"];
  std::vector<std::string> agents;
  for (const auto& t : turns)
    if (IsLlmTurn(t) && InConversation(t) &&
        std::find(agents.begin(), agents.end(), t.value("role", "")) == agents.end())
      agents.push_back(t.value("role", ""));
  int64_t lines = 0;
  for (const auto& agent : agents) {
    // The opening as the agent saw it at its first turn.
    size_t first = 0;
    while (first < turns.size() && turns[first].value("role", "") != agent) ++first;
    Json messages = opening.Messages(record, agent, first);
    size_t last_own = 0;
    for (size_t i = 0; i < turns.size(); ++i)
      if (InConversation(turns[i]) && turns[i].value("role", "") == agent) last_own = i;
    // Up to and including the agent's last turn: what follows it was never
    // answered by this agent.
    for (size_t i = 0; i <= last_own && i < turns.size(); ++i)
      if (InConversation(turns[i])) messages.push_back(TurnMessage(turns[i], agent));
    Json line = {{"task_id", record.value("task_id", "")},
                 {"agent", agent},
                 {"status", record.value("status", "")},
                 {"reason", record.value("reason", "")},
                 {"messages", messages}};
    out << DumpJson(line) << "\n";
    ++lines;
  }
  return lines;
}

// RL: one line per LLM call with the prompt it was sent.
int64_t WriteRl(const Json& record, Opening& opening, std::ostream& out) {
  const Json& turns = record["turns"];
  const Json reward = Reward(record.value("vars", Json::object()));
  int64_t lines = 0;
  for (size_t i = 0; i < turns.size(); ++i) {
    const Json& turn = turns[i];
    if (!IsLlmTurn(turn)) continue;
    const std::string role = turn.value("role", "");
    Json prompt = opening.Messages(record, role, i);
    if (InConversation(turn) && opening.conversation(role)) {
      for (size_t j = 0; j < i; ++j)
        if (InConversation(turns[j])) prompt.push_back(TurnMessage(turns[j], role));
    }
    Json line = {{"task_id", record.value("task_id", "")},
                 {"step", turn.value("step", "")},
                 {"turn", i},
                 {"role", role},
                 {"model", turn.value("model", "")},
                 {"prompt", prompt},
                 {"response", turn.value("content", Json())},
                 {"finish_reason", turn.value("finish_reason", "")},
                 {"usage", turn.value("usage", Json::object())},
                 {"reward", reward},
                 {"status", record.value("status", "")},
                 {"reason", record.value("reason", "")},
                 {"endpoint", turn.value("endpoint", "")}};
    if (turn.contains("tool_calls")) line["tool_calls"] = turn["tool_calls"];
    if (turn.contains("extra") && turn["extra"].is_object())
      for (const auto& [k, v] : turn["extra"].items())
        if (!line.contains(k)) line[k] = v;
    out << DumpJson(line) << "\n";
    ++lines;
  }
  return lines;
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Stats: accumulated over every record, written once at the end.
struct StatsAccumulator {
  struct Role {
    int64_t steps = 0;
    double handling_s = 0, queue_wait_s = 0;
    std::vector<double> handling;
  };
  struct Tokens {
    int64_t calls = 0, prompt = 0, completion = 0;
  };
  int64_t records = 0;
  std::vector<double> end_to_end;
  std::map<std::string, int64_t> by_status;
  std::map<std::string, Role> roles;
  std::map<std::string, std::map<std::string, Tokens>> tokens;  // role -> model -> tokens
  std::map<std::string, Tokens> models;

  void Add(const Json& record) {
    ++records;
    by_status[record.value("status", "unknown")]++;
    end_to_end.push_back(record.value("duration_s", 0.0));
    if (record.contains("spans") && record["spans"].is_array()) {
      for (const auto& s : record["spans"]) {
        Role& r = roles[s.value("role", "")];
        r.steps++;
        const double handling = s.value("handling_s", 0.0), wait = s.value("queue_wait_s", 0.0);
        r.handling_s += handling;
        r.queue_wait_s += std::max(0.0, wait);
        r.handling.push_back(handling);
      }
    }
    for (const auto& t : record["turns"]) {
      if (!IsLlmTurn(t)) continue;
      const Json usage = t.value("usage", Json::object());
      for (Tokens* k : {&tokens[t.value("role", "")][t.value("model", "")], &models[t.value("model", "")]}) {
        k->calls++;
        k->prompt += usage.value("prompt_tokens", int64_t{0});
        k->completion += usage.value("completion_tokens", int64_t{0});
      }
    }
  }

  Json ToJson() const {
    double total = 0;
    for (double d : end_to_end) total += d;
    Json role_json = Json::object();
    for (const auto& [name, r] : roles) {
      role_json[name] = {{"steps", r.steps},
                         {"handling_s", r.handling_s},
                         {"queue_wait_s", r.queue_wait_s},
                         {"mean_handling_s", r.steps ? r.handling_s / static_cast<double>(r.steps) : 0.0},
                         {"p95_handling_s", Quantile(r.handling, 0.95)},
                         {"share_of_end_to_end", total > 0 ? r.handling_s / total : 0.0},
                         {"queue_share_of_end_to_end", total > 0 ? r.queue_wait_s / total : 0.0}};
    }
    auto tokens_json = [](const Tokens& t) {
      return Json{{"calls", t.calls}, {"prompt_tokens", t.prompt}, {"completion_tokens", t.completion}};
    };
    Json token_json = Json::object();
    for (const auto& [role, by_model] : tokens)
      for (const auto& [model, t] : by_model) token_json[role][model] = tokens_json(t);
    Json model_json = Json::object();
    for (const auto& [model, t] : models) model_json[model] = tokens_json(t);
    Json status_json = Json::object();
    for (const auto& [s, n] : by_status) status_json[s] = n;
    return {{"records", records},
            {"by_status", status_json},
            {"end_to_end_s",
             {{"total", total},
              {"mean", end_to_end.empty() ? 0.0 : total / static_cast<double>(end_to_end.size())},
              {"p50", Quantile(end_to_end, 0.5)},
              {"p95", Quantile(end_to_end, 0.95)}}},
            {"roles", role_json},
            {"tokens_by_role", token_json},
            {"tokens_by_model", model_json}};
  }
};

}  // namespace

StatusOr<ExportCounts> ExportRun(const ExportOptions& options, std::ostream& out) {
  if (options.format != "sft" && options.format != "rl" && options.format != "stats")
    return InvalidArgument("--format must be sft, rl or stats, got '" + options.format + "'");
  std::optional<config::Pipeline> pipeline;
  if (!options.pipeline_path.empty()) {
    auto loaded = config::LoadPipelineOrError(options.pipeline_path, options.overrides);
    if (!loaded.ok()) return FailedPrecondition(loaded.status().message());
    pipeline = std::move(*loaded);
  }
  const std::vector<std::string> files = RecordFiles(options.output_dir);
  if (files.empty()) return NotFound("no p*.jsonl or p*.jsonl.zst records in " + options.output_dir);
  Opening opening(pipeline ? &*pipeline : nullptr);
  StatsAccumulator stats;
  ExportCounts counts;
  for (const auto& path : files) {
    MATRIX_ASSIGN_OR_RETURN(auto in, LineReader::Open(path));
    std::string line, error;
    int64_t line_no = 0;
    while (in->Next(&line, &error)) {
      ++line_no;
      if (line.empty()) continue;
      Json record = Json::parse(line, nullptr, false);
      if (record.is_discarded() || !record.is_object())
        return DataLoss(path + " line " + std::to_string(line_no) + ": not a JSON record");
      ++counts.records;
      if (!record.contains("turns") || !record["turns"].is_array()) record["turns"] = Json::array();
      if (options.format == "stats") {
        stats.Add(record);
        continue;
      }
      const int64_t n = options.format == "sft" ? WriteSft(record, opening, out) : WriteRl(record, opening, out);
      if (n == 0) ++counts.skipped;
      counts.lines += n;
    }
    if (!error.empty()) return DataLoss(path + " after line " + std::to_string(line_no) + ": " + error);
  }
  if (options.format == "stats") {
    out << DumpJson(stats.ToJson(), 2) << "\n";
    counts.lines = 1;
  }
  if (!out) return Internal("write failed");
  return counts;
}

int ExportCommand(const ExportOptions& options) {
  const bool to_file = !options.out_path.empty() && options.out_path != "-";
  // A file is written beside its final name and renamed when complete.
  const std::string partial = options.out_path + ".partial";
  std::ofstream file;
  if (to_file) {
    file.open(partial, std::ios::binary | std::ios::trunc);
    if (!file) {
      std::cerr << "error: cannot write " << partial << "\n";
      return 1;
    }
  }
  std::ostream& out = to_file ? static_cast<std::ostream&>(file) : std::cout;
  auto counts = ExportRun(options, out);
  if (to_file) {
    file.close();
    if (counts.ok() && (!file || std::rename(partial.c_str(), options.out_path.c_str()) != 0))
      counts = Internal("cannot write " + options.out_path);
    if (!counts.ok()) std::remove(partial.c_str());
  }
  if (!counts.ok()) {
    std::cerr << "error: " << counts.status().message() << "\n";
    return counts.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::cout.flush();
  std::cerr << "matrix export: " << counts->records << " records -> " << counts->lines << " " << options.format
            << (options.format == "stats" ? " document" : " lines");
  if (counts->skipped) std::cerr << " (" << counts->skipped << " records with no LLM turns)";
  if (to_file) std::cerr << " in " << options.out_path;
  std::cerr << "\n";
  return 0;
}

}  // namespace matrix::cli
