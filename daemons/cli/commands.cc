#include "daemons/cli/commands.h"

#include <iostream>

#include "common/config/pipeline_loader.h"
#include "common/base/files.h"
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
  std::cout << config::DescribePipeline(*result.pipeline) << "OK\n";
  return 0;
}

int StatusCommand(const std::string& run_dir) {
  Progress p = ReadProgress(run_dir);
  if (p.partitions == 0) {
    std::cerr << "no progress files under " << run_dir << "/progress\n";
    return 1;
  }
  std::cout << FormatProgress(p, 0, 0, 0) << "\n";
  std::cout << "partitions: " << p.partitions_finished << "/" << p.partitions << " finished\n";
  std::cout << "in flight per role: " << p.roles_in_flight.dump() << "\n";
  // Live daemon state, when the run is still going.
  if (auto ep = ReadFile(run_dir + "/endpoints/broker"); ep.ok()) {
    std::string endpoint = ep->substr(0, ep->find('\n'));
    auto stats = QueryStats(endpoint, 1000);
    if (stats.ok()) {
      std::cout << "broker " << endpoint << ": " << (*stats)["leases"] << " leases, "
                << (*stats)["workers"].size() << " workers\n";
      for (const auto& [role, q] : (*stats)["queues"].items())
        std::cout << "  queue " << role << ": depth " << q["depth"] << ", oldest " << q["oldest_age_s"] << " s\n";
    } else {
      std::cout << "broker " << endpoint << ": " << stats.status().message() << "\n";
    }
  }
  for (const auto& w : ReadWorkerProgress(run_dir)) {
    std::cout << "worker " << w.value("worker", "?") << (w.value("admission_paused", false) ? " (admission paused)" : "")
              << ": " << w.value("running", 0) << " running, " << w.value("llm_calls", 0) << " LLM calls, "
              << w.value("llm_errors", 0) << " errors\n";
    if (w.contains("endpoints"))
      for (const auto& e : w["endpoints"])
        std::cout << "  endpoint " << e.value("url", "") << " [" << e.value("pool", "") << "]: "
                  << (e.value("healthy", true) ? "healthy" : "UNHEALTHY") << ", in flight " << e.value("in_flight", 0)
                  << ", requests " << e.value("requests", 0) << ", errors " << e.value("errors", 0) << "\n";
  }
  return 0;
}

}  // namespace matrix::cli
