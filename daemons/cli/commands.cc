#include "daemons/cli/commands.h"

#include <algorithm>
#include <cstdint>
#include <iostream>

#include "common/config/pipeline_loader.h"
#include "common/base/files.h"
#include "daemons/cli/preflight.h"
#include "daemons/cli/stats_client.h"
#include "daemons/cli/summary.h"

namespace matrix::cli {

int ValidateCommand(const std::string& path, const std::vector<std::string>& overrides) {
  auto result = config::LoadPipeline(path, overrides);
  for (const auto& e : result.errors) std::cerr << e.ToString() << "\n";
  if (!result.pipeline || !result.errors.empty()) {
    std::cerr << result.errors.size() << " error(s)\n";
    return 1;
  }
  // What `matrix run` would refuse to start with (keys, dataset) in this environment.
  if (auto problems = Preflight(*result.pipeline, ""); !problems.empty()) {
    for (const auto& p : problems) std::cerr << result.pipeline->source_path << ": " << p << "\n";
    std::cerr << problems.size() << " error(s)\n";
    return 1;
  }
  std::cout << config::DescribePipeline(*result.pipeline) << "OK\n";
  return 0;
}

namespace {

void PrintBroker(const std::string& label, const std::string& endpoint, const std::string& keys_dir) {
  auto stats = QueryStats(endpoint, 1000, keys_dir);
  if (!stats.ok()) {
    std::cout << label << endpoint << ": " << stats.status().message() << "\n";
    return;
  }
  const Json& c = (*stats)["counters"];
  std::cout << label << endpoint << ": " << (*stats)["leases"] << " leases, " << (*stats)["workers"].size()
            << " workers";
  if (stats->contains("peers"))
    std::cout << ", " << (*stats)["peers"].size() << " peers, load " << stats->value("load", 0.0) << ", forwarded "
              << c.value("forwarded", 0) << ", stolen " << c.value("stolen", 0) << ", from peers "
              << c.value("from_peers", 0);
  std::cout << "\n";
  for (const auto& [role, q] : (*stats)["queues"].items())
    std::cout << "    queue " << role << ": depth " << q["depth"] << ", oldest " << q["oldest_age_s"] << " s\n";
}

}  // namespace

int StatusCommand(const std::string& run_dir) {
  // A job on many nodes: the newest job's nodes and their progress.
  const std::vector<std::string> nodes = RunNodes(run_dir);
  std::string job;
  int64_t newest = -1;
  std::vector<Json> node_states;
  for (const auto& node : nodes) {
    auto text = ReadFile(run_dir + "/nodes/" + node + "/node.json");
    Json j = text.ok() ? Json::parse(*text, nullptr, false) : Json();
    if (j.is_discarded() || !j.is_object()) j = Json{{"node", node}, {"state", "starting"}};
    if (j.value("updated_us", int64_t{0}) > newest) {
      newest = j.value("updated_us", int64_t{0});
      job = j.value("job", "");
    }
    node_states.push_back(std::move(j));
  }
  Progress p = ReadProgress(run_dir, job);
  if (p.partitions == 0) {
    std::cerr << "no progress files under " << run_dir << "/progress or " << run_dir << "/nodes/*/progress\n";
    return 1;
  }
  int64_t started = INT64_MAX, updated = 0;
  for (const auto& w : ReadWorkerProgress(run_dir)) {
    if (!job.empty() && w.value("job", "") != job) continue;
    started = std::min(started, w.value("started_us", INT64_MAX));
    updated = std::max(updated, w.value("updated_us", int64_t{0}));
  }
  const double elapsed = started < updated ? (updated - started) / 1e6 : 0;
  std::cout << FormatProgress(p, elapsed, elapsed > 0 ? p.completion_tokens / elapsed : 0,
                              elapsed > 0 ? (p.written - p.preexisting) / elapsed : 0)
            << "\n";
  std::cout << "partitions: " << p.partitions_finished << "/" << p.partitions << " finished; in flight "
            << p.in_flight << ", failed " << p.failed << "\n";
  std::cout << "in flight per role: " << DumpJson(p.roles_in_flight) << "\n";
  if (auto cost = CostSoFar(p)) {
    std::cout << "cost by model:";
    for (const auto& [model, c] : cost->by_model) {
      auto t = p.tokens_by_model.find(model);
      const ModelTokens tokens = t == p.tokens_by_model.end() ? ModelTokens{} : t->second;
      std::cout << (model == cost->by_model.begin()->first ? " " : ", ") << model << " "
                << FormatMoney(c, cost->currency) << " (" << tokens.prompt << " prompt + " << tokens.completion
                << " completion tokens)";
    }
    std::cout << "\n";
  }
  // Live daemon state, when the run is still going.
  if (auto ep = ReadFile(run_dir + "/endpoints/broker"); ep.ok()) PrintBroker("broker ", ep->substr(0, ep->find('\n')), "");
  for (const auto& n : node_states) {
    const std::string node = n.value("node", "?");
    if (!job.empty() && n.value("job", "") != job) continue;
    std::cout << "node " << node << " [" << n.value("state", "?") << "] " << n.value("address", "")
              << " partitions [" << n.value("partitions", "") << "]\n";
    if (auto ep = ReadFile(run_dir + "/nodes/" + node + "/endpoints/broker"); ep.ok() && n.value("state", "") == "running")
      PrintBroker("  broker ", ep->substr(0, ep->find('\n')), run_dir);
  }
  for (const auto& w : ReadWorkerProgress(run_dir)) {
    if (!job.empty() && w.contains("node") && w.value("job", "") != job) continue;
    std::cout << "worker " << (w.contains("node") ? w["node"].get<std::string>() + "/" : "") << w.value("worker", "?")
              << (w.value("admission_paused", false) ? " (admission paused)" : "")
              << ": " << w.value("running", 0) << " running, " << w.value("steps", 0) << " steps, "
              << w.value("llm_calls", 0) << " LLM calls, " << w.value("llm_errors", 0) << " errors\n";
    if (w.contains("endpoints"))
      for (const auto& e : w["endpoints"])
        std::cout << "  endpoint " << e.value("url", "") << " [" << e.value("pool", "") << "]: "
                  << e.value("state", e.value("healthy", true) ? "healthy" : "UNHEALTHY") << ", in flight " << e.value("in_flight", 0)
                  << ", requests " << e.value("requests", 0) << ", errors " << e.value("errors", 0) << "\n";
  }
  return 0;
}

}  // namespace matrix::cli
