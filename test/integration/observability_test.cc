// Integration: a real Prometheus watching a running `matrix run`. The run
// publishes prometheus/targets.json in the directory given by --run-dir; a
// Prometheus started on a free port scrapes every daemon from it; every
// exposition passes `promtool check metrics`; every query of the Grafana
// dashboard (configs/grafana/matrix-dashboard.json), with Grafana's variables
// substituted, parses as PromQL and returns data; a restarted worker is found
// at its new address; the finished run leaves an empty target list.
// Skipped when prometheus or promtool is not installed.
#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/json.h"
#include "test/common/metrics/scrape_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

// The file's text, or "" when it cannot be read.
std::string Slurp(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? *text : std::string();
}

std::string Which(const std::string& tool) {
  std::string out;
  if (RunCommand("command -v " + tool, &out) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// A loopback port nothing listens on: bind port 0, read it back, release it.
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

std::string YamlQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Grafana's variables as a dashboard query sees them with "All" selected.
std::string SubstituteGrafanaVariables(std::string expr) {
  static const std::vector<std::pair<std::regex, std::string>> kRules = {
      {std::regex(R"(\$__rate_interval|\$\{__rate_interval\})"), "1m"},
      {std::regex(R"(\$__interval|\$\{__interval\})"), "15s"},
      {std::regex(R"(\$__range|\$\{__range\})"), "5m"},
      {std::regex(R"(\$\{(job|node|role|model)(:[a-z]+)?\})"), ".*"},
      {std::regex(R"(\$(job|node|role|model)\b)"), ".*"},
  };
  for (const auto& [re, value] : kRules) expr = std::regex_replace(expr, re, value);
  return expr;
}

// label_values(SELECTOR, LABEL) -> count by (LABEL) (SELECTOR): the PromQL a
// Grafana query variable runs.
std::string VariableQueryAsPromql(const std::string& query) {
  std::smatch m;
  static const std::regex kLabelValues(R"(^label_values\((.*),\s*([a-zA-Z_]+)\)$)");
  if (std::regex_match(query, m, kLabelValues)) return "count by (" + m[2].str() + ") (" + m[1].str() + ")";
  return query;
}

void CollectPanelExprs(const Json& panels, std::vector<std::pair<std::string, std::string>>* out) {
  for (const auto& panel : panels) {
    if (panel.contains("panels")) CollectPanelExprs(panel["panels"], out);
    if (!panel.contains("targets")) continue;
    for (const auto& t : panel["targets"])
      if (t.contains("expr")) out->push_back({panel.value("title", "?"), t["expr"].get<std::string>()});
  }
}

// Stops `matrix run` with SIGTERM (it stops its children) on the way out;
// SIGKILLs the run and every daemon it named when it does not stop in time.
class RunGuard {
 public:
  RunGuard(ChildProcess* run, std::string log) : run_(run), log_(std::move(log)) {}
  ~RunGuard() {
    if (!run_->Running()) return;
    run_->Signal(SIGTERM);
    if (run_->Wait(30'000) != -1) return;
    static const std::regex kPid(R"(=(\d+))");
    std::string line = Slurp(log_);
    size_t at = line.find("processes:");
    if (at != std::string::npos) {
      std::string rest = line.substr(at, line.find('\n', at) - at);
      for (auto it = std::sregex_iterator(rest.begin(), rest.end(), kPid); it != std::sregex_iterator(); ++it)
        ::kill(std::stoi((*it)[1].str()), SIGKILL);
    }
    run_->Signal(SIGKILL);
    run_->Wait(5'000);
  }

 private:
  ChildProcess* run_;
  std::string log_;
};

// The daemons of targets.json: process name -> group ({"targets": [...], "labels": {...}}).
std::map<std::string, Json> ReadTargets(const std::string& path) {
  std::map<std::string, Json> out;
  auto text = ReadFile(path);
  if (!text.ok()) return out;
  auto parsed = ParseJson(*text, path);
  if (!parsed.ok() || !parsed->is_array()) return out;
  for (const auto& group : *parsed) out[group["labels"].value("process", "")] = group;
  return out;
}

std::string PromQuery(const std::string& promtool, const std::string& url, const std::string& expr) {
  std::string out;
  RunCommand(promtool + " query instant " + url + " " + ShellQuote(expr), &out);
  return out;
}

TEST(ObservabilityTest, PrometheusScrapesEveryDaemonAndEveryDashboardQueryReturnsData) {
  const std::string prometheus = Which("prometheus"), promtool = Which("promtool");
  if (prometheus.empty() || promtool.empty()) GTEST_SKIP() << "prometheus or promtool not installed";
  TempDir dir;
  const std::string run_dir = dir.File("run");
  const std::string targets_path = run_dir + "/prometheus/targets.json";
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=300",
                    "run.max_concurrent_tasks=100", "simulator.speed=1", "--run-dir", run_dir, "--output", dir.File("out")},
                   dir.File("run.log"));
  RunGuard guard(&run, dir.File("run.log"));
  auto run_log = [&] { return Slurp(dir.File("run.log")); };

  // 1. Every daemon is listed with its labels.
  const std::set<std::string> kProcesses = {"store", "broker", "worker-0", "llm-sim"};
  ASSERT_TRUE(WaitUntil([&] { return ReadTargets(targets_path).size() == kProcesses.size(); }, 60'000))
      << run_log();
  std::map<std::string, Json> targets = ReadTargets(targets_path);
  for (const auto& name : kProcesses) {
    ASSERT_TRUE(targets.count(name)) << name;
    const Json& labels = targets[name]["labels"];
    EXPECT_EQ(labels["job"], "matrix");
    EXPECT_FALSE(labels["node"].get<std::string>().empty());
    EXPECT_EQ(labels["daemon"], name == "worker-0" ? "worker" : name);
    ASSERT_EQ(targets[name]["targets"].size(), 1u);
    // The address is the one the daemon published.
    auto published = ReadFile(run_dir + "/endpoints/" + name + ".metrics");
    ASSERT_TRUE(published.ok()) << name;
    EXPECT_NE(published->find(targets[name]["targets"][0].get<std::string>()), std::string::npos);
  }
  EXPECT_NE(run_log().find(run_dir + "/endpoints/*.metrics"), std::string::npos) << run_log();

  // 2. Prometheus, configured like a user's, on a free port.
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  ASSERT_TRUE(WriteFileAtomic(dir.File("prometheus.yml"),
                              "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
                              "scrape_configs:\n"
                              "  - job_name: matrix\n"
                              "    file_sd_configs: [{files: ['" + targets_path + "'], refresh_interval: 1s}]\n")
                  .ok());
  ChildProcess prom({prometheus, "--config.file=" + dir.File("prometheus.yml"),
                     "--storage.tsdb.path=" + dir.File("prom-data"), "--web.listen-address=127.0.0.1:" +
                     std::to_string(port)},
                    dir.File("prometheus.log"));
  auto prom_log = [&] {
    std::string text = Slurp(dir.File("prometheus.log"));
    return text.substr(text.size() > 3000 ? text.size() - 3000 : 0);
  };
  std::string up;
  ASSERT_TRUE(WaitUntil(
      [&] {
        up = PromQuery(promtool, url, "count(up{job=\"matrix\"} == 1)");
        return up.find("=> 4 @") != std::string::npos;
      },
      30'000))
      << up << prom_log();

  // 3. Each daemon's exposition is clean and says what the daemon did.
  std::map<std::string, std::string> expositions;
  for (const auto& name : kProcesses) {
    std::string text;
    const std::string address = targets[name]["targets"][0].get<std::string>();
    ASSERT_EQ(HttpGet(address, "/metrics", &text), 0) << name << ": " << text;
    std::string report;
    EXPECT_EQ(PromtoolCheckMetrics(text, &report), 0) << name << ": " << report;
    EXPECT_EQ(report, "") << name;
    EXPECT_NE(text.find("matrix_build_info{"), std::string::npos) << name;
    expositions[name] = text;
  }
  const std::string& worker = expositions["worker-0"];
  for (const char* line :
       {"matrix_worker_tasks_total{status=\"admitted\"}", "matrix_worker_tasks_in_flight{role=\"teacher\"}",
        "matrix_worker_step_duration_seconds_count{role=\"teacher\"}",
        "matrix_worker_queue_wait_seconds_count{role=\"student\"}", "matrix_worker_hop_message_bytes_count",
        "matrix_worker_llm_prompt_tokens_total{model=\"llama\"}",
        "matrix_worker_llm_errors_total{endpoint=\"http://127.0.0.1:", "matrix_worker_store_cache_misses_total",
        "matrix_worker_refused_messages_total{kind=\"pipeline_mismatch\"} 0"})
    EXPECT_NE(worker.find(line), std::string::npos) << line << "\n" << worker;
  EXPECT_NE(expositions["llm-sim"].find("matrix_sim_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"),
            std::string::npos)
      << expositions["llm-sim"];
  EXPECT_NE(expositions["llm-sim"].find("matrix_sim_batch_size_count"), std::string::npos);

  // 4. Every dashboard query parses and returns data.
  auto dashboard_text = ReadFile(SourcePath("configs/grafana/matrix-dashboard.json"));
  ASSERT_TRUE(dashboard_text.ok());
  Json dashboard = Json::parse(*dashboard_text);
  EXPECT_GE(dashboard["schemaVersion"].get<int>(), 36);
  std::vector<std::pair<std::string, std::string>> queries;  // (where, PromQL)
  CollectPanelExprs(dashboard["panels"], &queries);
  ASSERT_GE(queries.size(), 30u);
  std::set<std::string> variables;
  for (const auto& v : dashboard["templating"]["list"]) {
    variables.insert(v["name"].get<std::string>());
    if (v["type"] != "query") continue;
    const Json& q = v["query"];
    queries.push_back({"variable " + v["name"].get<std::string>(),
                       VariableQueryAsPromql(q.is_object() ? q["query"].get<std::string>() : q.get<std::string>())});
  }
  for (const char* v : {"datasource", "job", "node", "role", "model"}) EXPECT_TRUE(variables.count(v)) << v;
  std::string rules = "groups:\n  - name: dashboard\n    rules:\n";
  for (size_t i = 0; i < queries.size(); ++i) {
    queries[i].second = SubstituteGrafanaVariables(queries[i].second);
    ASSERT_EQ(queries[i].second.find('$'), std::string::npos) << queries[i].second;
    rules += "      - record: dashboard:query" + std::to_string(i) + "\n        expr: " +
             YamlQuote(queries[i].second) + "\n";
  }
  ASSERT_TRUE(WriteFileAtomic(dir.File("dashboard_rules.yml"), rules).ok());
  std::string check;
  EXPECT_EQ(RunCommand(promtool + " check rules " + dir.File("dashboard_rules.yml"), &check), 0) << check << rules;
  for (const auto& [where, expr] : queries) {
    std::string result;
    // Rates and quantiles need two samples in their window: poll a little.
    bool has_data = WaitUntil(
        [&] {
          result = PromQuery(promtool, url, expr);
          return result.find(" => ") != std::string::npos;
        },
        15'000);
    EXPECT_TRUE(has_data) << where << ": " << expr << "\n" << result;
  }
  ASSERT_TRUE(run.Running()) << "the run ended before every query was checked; make it longer";

  // 5. A restarted worker is listed at its new address.
  std::smatch m;
  const std::string log_text = run_log();
  ASSERT_TRUE(std::regex_search(log_text, m, std::regex(R"(worker-0=(\d+))"))) << log_text;
  const std::string old_address = targets["worker-0"]["targets"][0].get<std::string>();
  ASSERT_EQ(::kill(std::stoi(m[1].str()), SIGKILL), 0);
  std::string new_address;
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto now = ReadTargets(targets_path);
        if (!now.count("worker-0")) return false;
        new_address = now["worker-0"]["targets"][0].get<std::string>();
        return new_address != old_address;
      },
      30'000))
      << Slurp(targets_path);

  // 6. The finished run leaves no targets behind.
  EXPECT_EQ(run.Wait(240'000), 0) << run_log();
  auto final_targets = ReadFile(targets_path);
  ASSERT_TRUE(final_targets.ok());
  EXPECT_EQ(*final_targets, "[]\n");
  EXPECT_TRUE(FileExists(run_dir + "/logs/worker-0.log")) << "a run directory given with --run-dir is kept";
  prom.Signal(SIGTERM);
  EXPECT_EQ(prom.Wait(10'000), 0) << prom_log();
}

}  // namespace
}  // namespace matrix::testing
