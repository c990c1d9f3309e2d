// matrix-llm-sim: an OpenAI-compatible server that behaves like a GPU serving
// engine (capacity, latency, deterministic text, tool calls, injected faults).
// flags -> SimConfig -> HttpServer (one event loop) -> SIGTERM/SIGINT as events -> exit 0.
#include <cstdio>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "daemons/llm_sim/http_server.h"
#include "daemons/llm_sim/sim_config.h"

int main(int argc, char** argv) {
  using namespace matrix;
  using namespace matrix::llm_sim;
  SetLogComponent("llm-sim");
  bool help = false;
  StatusOr<SimConfig> config = ParseSimConfig(argc, argv, &help);
  if (help) {
    std::fputs(SimUsage().c_str(), stdout);
    return 0;
  }
  if (!config.ok()) {
    LOG_ERROR << config.status().message() << " (see --help)";
    return 2;
  }
  const std::string& level = config->log_level;
  SetLogLevel(level == "debug"  ? LogLevel::kDebug
              : level == "warn" ? LogLevel::kWarning
              : level == "error" ? LogLevel::kError
                                 : LogLevel::kInfo);
  const int64_t max_files = RaiseOpenFileLimit();

  auto server = HttpServer::Create(*config, SystemClock::Get());
  if (!server.ok()) {
    LOG_ERROR << "cannot start: " << server.status().ToString();
    return 1;
  }
  if (Status st = (*server)->PublishAddress(); !st.ok()) {
    LOG_ERROR << "cannot publish address: " << st.ToString();
    return 1;
  }
  LOG_INFO << "serving model '" << config->model_name << "' on http://" << (*server)->address()
           << "/v1 (slots " << config->slots << ", speed " << config->speed << ", open-file limit "
           << max_files << ")";
  if (!(*server)->metrics_address().empty())
    LOG_INFO << "metrics at http://" << (*server)->metrics_address() << "/metrics";
  (*server)->Run();
  LOG_INFO << "stopped";
  return 0;
}
