#include "daemons/cli/summary.h"

#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/base/files.h"
#include "common/base/zstd_lines.h"
#include "common/config/pipeline.h"

namespace matrix::cli {

namespace {
std::vector<std::string> ListFiles(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(dir + "/" + name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The record files of an output directory: *.jsonl and *.jsonl.zst.
std::vector<std::string> RecordFiles(const std::string& dir) {
  std::vector<std::string> out = ListFiles(dir, ".jsonl");
  for (auto& f : ListFiles(dir, ".jsonl.zst")) out.push_back(std::move(f));
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

PriceTable PricesOf(const config::Pipeline& pipeline) {
  PriceTable out;
  for (const auto& [name, m] : pipeline.models)
    if (m.price) out[name] = ModelPrice{m.price->input_per_million, m.price->output_per_million, m.price->currency};
  return out;
}

PriceTable PricesFromJson(const Json& prices) {
  PriceTable out;
  if (!prices.is_object()) return out;
  for (const auto& [name, j] : prices.items()) {
    if (!j.is_object() || !j.contains("input_per_million") || !j["input_per_million"].is_number() ||
        !j.contains("output_per_million") || !j["output_per_million"].is_number())
      continue;
    ModelPrice price;
    price.input_per_million = j["input_per_million"].get<double>();
    price.output_per_million = j["output_per_million"].get<double>();
    if (j.contains("currency") && j["currency"].is_string()) price.currency = j["currency"].get<std::string>();
    out[name] = price;
  }
  return out;
}

std::optional<Cost> CostOf(const TokensByModel& tokens, const PriceTable& prices) {
  if (prices.empty()) return std::nullopt;
  Cost cost;
  cost.currency = prices.begin()->second.currency;
  for (const auto& [model, price] : prices) {
    auto it = tokens.find(model);
    const ModelTokens t = it == tokens.end() ? ModelTokens{} : it->second;
    const double c = (static_cast<double>(t.prompt) * price.input_per_million +
                      static_cast<double>(t.completion) * price.output_per_million) /
                     1e6;
    cost.by_model[model] = c;
    cost.total += c;
  }
  return cost;
}

std::optional<double> ProjectCost(double so_far, int64_t written_this_run, int64_t to_write_this_run) {
  if (written_this_run <= 0 || written_this_run * 100 < to_write_this_run) return std::nullopt;
  const int64_t remaining = std::max<int64_t>(0, to_write_this_run - written_this_run);
  return so_far + so_far / static_cast<double>(written_this_run) * static_cast<double>(remaining);
}

std::string FormatMoney(double amount, const std::string& currency) {
  const double a = std::abs(amount);
  const int decimals = a == 0 || a >= 1 ? 2 : a >= 0.01 ? 4 : 6;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, amount);
  return currency == "USD" ? "$" + std::string(buf) : std::string(buf) + " " + currency;
}

StatusOr<Json> SummarizeOutput(const std::string& output_dir, const PriceTable& prices) {
  TokensByModel model_tokens;  // of the records' turns, when there are prices
  int64_t records = 0, duplicates = 0, bad_lines = 0, prompt = 0, completion = 0, turns = 0;
  std::map<std::string, int64_t> by_status, by_reason;
  std::map<std::string, std::pair<int64_t, int64_t>> bool_vars;  // true, total
  std::map<std::string, std::pair<double, int64_t>> num_vars;    // sum, count
  std::set<std::string> ids;
  double duration_sum = 0;
  // Only what is counted is parsed: turns (for their models' tokens) only when there are prices.
  std::vector<std::string_view> keys = {"task_id", "status", "reason", "usage", "counters", "duration_s", "vars"};
  if (!prices.empty()) keys.push_back("turns");
  for (const auto& path : RecordFiles(output_dir)) {
    auto in = LineReader::Open(path);
    if (!in.ok()) continue;  // removed since it was listed
    std::string line, error;
    while ((*in)->Next(&line, &error)) {
      Json rec = ParseJsonMembers(line, keys);
      if (rec.is_discarded() || !rec.is_object()) {
        ++bad_lines;
        continue;
      }
      ++records;
      if (!ids.insert(rec.value("task_id", "")).second) ++duplicates;
      by_status[rec.value("status", "unknown")]++;
      by_reason[rec.value("reason", "")]++;
      if (rec.contains("usage")) {
        prompt += rec["usage"].value("prompt_tokens", 0);
        completion += rec["usage"].value("completion_tokens", 0);
      }
      if (!prices.empty() && rec.contains("turns") && rec["turns"].is_array()) {
        for (const auto& turn : rec["turns"]) {
          if (!turn.is_object() || !turn.contains("usage") || !turn["usage"].is_object()) continue;
          if (!turn.contains("model") || !turn["model"].is_string()) continue;
          const std::string model = turn["model"].get<std::string>();
          if (model.empty()) continue;
          ModelTokens& t = model_tokens[model];
          t.prompt += turn["usage"].value("prompt_tokens", int64_t{0});
          t.completion += turn["usage"].value("completion_tokens", int64_t{0});
        }
      }
      if (rec.contains("counters")) turns += rec["counters"].value("turns", 0);
      duration_sum += rec.value("duration_s", 0.0);
      if (rec.contains("vars") && rec["vars"].is_object()) {
        for (const auto& [k, v] : rec["vars"].items()) {
          if (v.is_boolean()) {
            bool_vars[k].first += v.get<bool>() ? 1 : 0;
            bool_vars[k].second++;
          } else if (v.is_number()) {
            num_vars[k].first += v.get<double>();
            num_vars[k].second++;
          }
        }
      }
    }
    if (!error.empty()) ++bad_lines;  // a damaged .zst: the rest of the file is unreadable
  }
  Json rates = Json::object();
  for (const auto& [k, v] : bool_vars) rates[k] = records ? static_cast<double>(v.first) / records : 0.0;
  Json means = Json::object();
  for (const auto& [k, v] : num_vars) means[k] = v.second ? v.first / v.second : 0.0;
  Json out = {{"records", records},
              {"unique_tasks", ids.size()},
              {"duplicates", duplicates},
              {"unparseable_lines", bad_lines},
              {"by_status", by_status},
              {"by_reason", by_reason},
              {"rates", rates},
              {"means", means},
              {"prompt_tokens", prompt},
              {"completion_tokens", completion},
              {"total_tokens", prompt + completion},
              {"mean_turns", records ? static_cast<double>(turns) / records : 0.0},
              {"mean_task_duration_s", records ? duration_sum / records : 0.0}};
  if (auto cost = CostOf(model_tokens, prices)) {
    Json by_model = Json::object();
    for (const auto& [model, c] : cost->by_model) {
      const ModelTokens t = model_tokens.count(model) ? model_tokens.at(model) : ModelTokens{};
      const ModelPrice& price = prices.at(model);
      by_model[model] = {{"prompt_tokens", t.prompt},
                         {"completion_tokens", t.completion},
                         {"input_per_million", price.input_per_million},
                         {"output_per_million", price.output_per_million},
                         {"cost", c}};
    }
    out["cost"] = {{"currency", cost->currency}, {"total", cost->total}, {"by_model", by_model}};
    Json unpriced = Json::array();
    for (const auto& [model, t] : model_tokens)
      if (prices.count(model) == 0 && t.prompt + t.completion > 0) unpriced.push_back(model);
    if (!unpriced.empty()) out["cost"]["unpriced_models"] = unpriced;
  }
  return out;
}

std::vector<std::string> RunNodes(const std::string& run_dir) {
  std::vector<std::string> nodes;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(run_dir + "/nodes", ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory(ec) && !name.empty() && name[0] != '.') nodes.push_back(name);
  }
  std::sort(nodes.begin(), nodes.end());
  return nodes;
}

std::vector<std::string> ProgressFiles(const std::string& run_dir) {
  std::vector<std::string> files = ListFiles(run_dir + "/progress", ".json");
  for (const auto& node : RunNodes(run_dir))
    for (auto& f : ListFiles(run_dir + "/nodes/" + node + "/progress", ".json")) files.push_back(std::move(f));
  return files;
}

std::vector<Json> ReadWorkerProgress(const std::string& run_dir) {
  std::vector<Json> out;
  const std::string nodes_prefix = run_dir + "/nodes/";
  for (const auto& path : ProgressFiles(run_dir)) {
    auto text = ReadFile(path);
    if (!text.ok()) continue;
    Json j = Json::parse(*text, nullptr, false);
    if (j.is_discarded()) continue;
    if (path.rfind(nodes_prefix, 0) == 0)
      j["node"] = path.substr(nodes_prefix.size(), path.find('/', nodes_prefix.size()) - nodes_prefix.size());
    out.push_back(std::move(j));
  }
  return out;
}

StatusOr<int64_t> DropFailedRecords(const std::string& output_dir) {
  int64_t dropped = 0;
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(output_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() == ".jsonl" ||
        (name.size() > 10 && name.compare(name.size() - 10, 10, ".jsonl.zst") == 0))
      files.push_back(entry.path().string());
  }
  const std::vector<std::string_view> kStatus = {"status"};
  for (const auto& path : files) {
    MATRIX_ASSIGN_OR_RETURN(std::string data, ReadLinesFile(path));
    std::string keep, retried;
    size_t pos = 0;
    while (pos < data.size()) {
      size_t nl = data.find('\n', pos);
      const size_t end = nl == std::string::npos ? data.size() : nl + 1;
      std::string_view line(data.data() + pos, end - pos);
      Json rec = ParseJsonMembers(line, kStatus);
      const std::string status = rec.is_object() ? rec.value("status", "") : "";
      (status == "failed" || status == "lost" ? retried : keep).append(line);
      pos = end;
    }
    if (retried.empty()) continue;
    const int64_t n = static_cast<int64_t>(std::count(retried.begin(), retried.end(), '\n'));
    if (IsZstdPath(path)) {
      // The same format as the records: p0.jsonl.zst.retried is a .zst too.
      ZstdFrameWriter zstd;
      std::string frame;
      MATRIX_RETURN_IF_ERROR(zstd.Compress(retried, &frame));
      retried = std::move(frame);
      MATRIX_RETURN_IF_ERROR(zstd.Compress(keep, &frame));
      keep = std::move(frame);
    }
    {
      std::ofstream out(path + ".retried", std::ios::app | std::ios::binary);
      out << retried;
      out.flush();
      if (!out) return Unavailable("cannot write " + path + ".retried");
    }
    MATRIX_RETURN_IF_ERROR(WriteFileAtomic(path, keep, 0644));
    dropped += n;
  }
  return dropped;
}

Progress ReadProgress(const std::string& run_dir, const std::string& job) {
  Progress p;
  for (const auto& path : ProgressFiles(run_dir)) {
    auto text = ReadFile(path);
    if (!text.ok()) continue;
    Json j = Json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (!job.empty() && j.value("job", "") != job) continue;
    if (j.contains("tokens_by_model") && j["tokens_by_model"].is_object())
      for (const auto& [model, t] : j["tokens_by_model"].items()) {
        if (!t.is_object()) continue;
        p.tokens_by_model[model].prompt += t.value("prompt", int64_t{0});
        p.tokens_by_model[model].completion += t.value("completion", int64_t{0});
      }
    if (p.prices.empty() && j.contains("prices")) p.prices = PricesFromJson(j["prices"]);
    p.tokens += j.value("prompt_tokens", 0) + j.value("completion_tokens", 0);
    p.completion_tokens += j.value("completion_tokens", 0);
    p.llm_calls += j.value("llm_calls", 0);
    p.llm_errors += j.value("llm_errors", 0);
    p.llm_attempts += j.value("llm_attempts", int64_t{0});
    if (j.contains("endpoints") && j["endpoints"].is_array())
      for (const auto& e : j["endpoints"]) {
        if (!e.is_object() || !e.contains("pool") || !e["pool"].is_string()) continue;
        bool& up = p.model_up[e["pool"].get<std::string>()];
        up = up || e.value("state", "") == "healthy";
      }
    if (j.contains("output_blocked") && j["output_blocked"].is_object()) {
      const Json& b = j["output_blocked"];
      const double for_s = b.value("for_s", 0.0);
      if (p.io_error.empty() || for_s > p.io_error_s) {
        p.io_error = b.value("error", "output blocked");
        p.io_error_s = for_s;
      }
    }
    if (j.contains("roles_in_flight"))
      for (const auto& [role, n] : j["roles_in_flight"].items())
        p.roles_in_flight[role] = p.roles_in_flight.value(role, 0) + n.get<int64_t>();
    if (!j.contains("partitions")) continue;
    for (const auto& [name, part] : j["partitions"].items()) {
      p.partitions++;
      p.total += part.value("total", 0);
      p.written += part.value("written", 0);
      p.preexisting += part.value("preexisting", 0);
      p.in_flight += part.value("in_flight", 0);
      if (part.contains("counts"))
        p.failed += part["counts"].value("failed", 0) + part["counts"].value("lost", 0);
      if (part.value("finished", false)) p.partitions_finished++;
    }
  }
  return p;
}

std::string FormatDuration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "--:--";
  int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%d:%02d", s / 60, s % 60);
  }
  return buf;
}

std::optional<Cost> CostSoFar(const Progress& p) { return CostOf(p.tokens_by_model, p.prices); }

std::string FormatCost(const Progress& p) {
  auto cost = CostSoFar(p);
  if (!cost) return "";
  std::string out = FormatMoney(cost->total, cost->currency) + " so far";
  if (auto projected = ProjectCost(cost->total, p.written - p.preexisting, p.total - p.preexisting))
    out += ", ~" + FormatMoney(*projected, cost->currency) + " projected";
  return out;
}

std::string FormatProgress(const Progress& p, double elapsed_s, double completion_tokens_per_s, double tasks_per_s) {
  double pct = p.total ? 100.0 * p.written / p.total : 0.0;
  double err = p.llm_calls ? 100.0 * p.llm_errors / p.llm_calls : 0.0;
  // Attempts beyond the first of each call: what faults cost, even when calls end well.
  double retried = p.llm_attempts > 0 ? 100.0 * (p.llm_attempts - p.llm_calls) / p.llm_attempts : 0.0;
  int64_t remaining = p.total - p.written;
  double eta = tasks_per_s > 0 ? remaining / tasks_per_s : -1;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "%lld/%lld tasks %.1f%% | in flight %lld | failed %lld | %.0f completion tok/s | LLM errors %.1f%%, "
                "retries %.1f%% | elapsed %s | ETA %s",
                static_cast<long long>(p.written), static_cast<long long>(p.total), pct,
                static_cast<long long>(p.in_flight), static_cast<long long>(p.failed), completion_tokens_per_s, err,
                std::max(0.0, retried),
                FormatDuration(elapsed_s).c_str(), remaining == 0 ? "0:00" : FormatDuration(eta).c_str());
  std::string line = buf;
  if (const std::string cost = FormatCost(p); !cost.empty()) line += " | " + cost;
  // Shown first where it cannot be missed: nothing is being written.
  if (!p.io_error.empty())
    line = "OUTPUT BLOCKED " + FormatDuration(p.io_error_s) + " (" + p.io_error + ") | " + line;
  return line;
}

}  // namespace matrix::cli
