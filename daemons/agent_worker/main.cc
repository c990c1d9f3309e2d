// matrix-worker: hosts agents (roles) and the sources and sinks of its
// partitions. Usage:
//   matrix-worker --pipeline FILE --broker EP --store EP --output-dir DIR
//                 [--run-dir DIR] [--id NAME] [--partitions 0,3] [--roles a,b]
//                 [--metrics HOST:PORT] [--nodes-dir RUN/nodes --keys-dir RUN]
//                 [--sole-worker] [key.path=value ...]
// --metrics (default 127.0.0.1:0, "" to disable) serves /metrics and, with
// --run-dir, publishes the address in <run-dir>/endpoints/<id>.metrics.
// --sole-worker: no other worker serves this run (WorkerConfig::sole_worker).
#include <signal.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include <sstream>

#include "common/base/files.h"
#include "common/base/flags.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/config/pipeline_loader.h"
#include "common/transport/job_keys.h"
#include "common/transport/transport.h"
#include "daemons/agent_worker/worker.h"

namespace {
std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace matrix;
  SetLogComponent("worker");
  auto flags = Flags::Parse(argc, argv, {"pipeline", "broker", "store", "output-dir", "run-dir", "run-id", "id",
                                         "node", "partitions", "roles", "grace-s", "heartbeat-ms", "metrics",
                                         "log-level", "nodes-dir", "keys-dir", "job", "models-dir",
                                         "progress-ms", "finished-dir", "stop-signal", "sole-worker"},
                            {"sole-worker"});
  if (!flags.ok()) {
    LOG_ERROR << flags.status().message();
    return 2;
  }
  if (flags->Get("log-level") == "debug") SetLogLevel(LogLevel::kDebug);
  auto sigfd = CreateStopSignalFd(flags->Get("stop-signal"));
  if (!sigfd.ok()) return 1;
  signal(SIGPIPE, SIG_IGN);
  RaiseOpenFileLimit();

  auto pipeline = config::LoadPipelineOrError(flags->Get("pipeline"), flags->positional());
  if (!pipeline.ok()) {
    LOG_ERROR << pipeline.status().message();
    return 2;
  }
  worker::WorkerConfig config;
  config.worker_id = flags->Get("id", "worker");
  SetLogComponent(config.worker_id);
  config.node = flags->Get("node", "local");
  config.run_id = flags->Get("run-id");
  config.broker_endpoint = flags->Get("broker");
  config.store_endpoint = flags->Get("store");
  config.output_dir = flags->Get("output-dir", pipeline->run.output_dir);
  config.run_dir = flags->Get("run-dir");
  config.metrics_bind = flags->Get("metrics", "127.0.0.1:0");  // "": not served
  for (const auto& p : SplitList(flags->Get("partitions"))) {
    char* end = nullptr;
    errno = 0;
    const unsigned long v = std::strtoul(p.c_str(), &end, 10);
    if (p.empty() || *end != '\0' || errno != 0 || v > UINT32_MAX) {
      LOG_ERROR << "--partitions: '" << p << "' is not a partition number";
      return 2;
    }
    config.partitions.push_back(static_cast<uint32_t>(v));
  }
  config.roles = SplitList(flags->Get("roles"));
  config.grace_s = flags->GetDouble("grace-s", config.grace_s);
  config.heartbeat_ms = static_cast<uint32_t>(flags->GetInt("heartbeat-ms", config.heartbeat_ms));
  config.signal_fd = *sigfd;
  config.nodes_dir = flags->Get("nodes-dir");
  config.sole_worker = flags->GetBool("sole-worker");
  config.job_id = flags->Get("job");
  config.models_dir = flags->Get("models-dir");
  config.progress_ms = static_cast<int>(flags->GetInt("progress-ms", config.progress_ms));
  config.finished_dir = flags->Get("finished-dir");
  if (flags->Has("keys-dir")) {
    auto keys = transport::LoadJobKeys(flags->Get("keys-dir"));
    if (!keys.ok()) {
      LOG_ERROR << keys.status().message();
      return 2;
    }
    config.keys = *keys;
  }

  transport::Context ctx;
  auto w = worker::Worker::Create(config, std::make_shared<const config::Pipeline>(std::move(*pipeline)), &ctx,
                                  SystemClock::Get());
  if (!w.ok()) {
    LOG_ERROR << "cannot start worker: " << w.status().ToString();
    return 1;
  }
  return (*w)->Run().ok() ? 0 : 1;
}
