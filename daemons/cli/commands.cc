#include "daemons/cli/commands.h"

#include <iostream>

#include "common/config/pipeline_loader.h"
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
  return 0;
}

}  // namespace matrix::cli
