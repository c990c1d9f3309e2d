// matrix-broker: this node's queues of orchestrator messages, one per role.
#include <signal.h>
#include <unistd.h>

#include "common/base/flags.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/transport/transport.h"
#include "daemons/queue_broker/broker_server.h"

int main(int argc, char** argv) {
  using namespace matrix;
  SetLogComponent("broker");
  auto flags = Flags::Parse(argc, argv, {"bind", "run-dir", "name", "heartbeat-ms", "worker-timeout-ms",
                                         "max-batch", "metrics", "log-level"});
  if (!flags.ok()) {
    LOG_ERROR << flags.status().message();
    return 2;
  }
  if (flags->Get("log-level") == "debug") SetLogLevel(LogLevel::kDebug);
  auto sigfd = CreateSignalFd({SIGTERM, SIGINT});
  if (!sigfd.ok()) return 1;

  broker::BrokerServerConfig config;
  config.bind = flags->Get("bind", config.bind);
  config.run_dir = flags->Get("run-dir");
  config.name = flags->Get("name", config.name);
  // Unique per incarnation, so workers notice a restarted broker.
  config.core.broker_id = config.name + "." + std::to_string(::getpid());
  config.core.heartbeat_ms = static_cast<uint32_t>(flags->GetInt("heartbeat-ms", 1000));
  config.core.worker_timeout_ms = static_cast<uint32_t>(flags->GetInt("worker-timeout-ms", 3000));
  config.core.max_batch = static_cast<size_t>(flags->GetInt("max-batch", 256));
  config.metrics_bind = flags->Get("metrics", "127.0.0.1:0");  // "": not served
  config.signal_fd = *sigfd;

  transport::Context ctx;
  auto server = broker::BrokerServer::Create(config, &ctx, SystemClock::Get());
  if (!server.ok()) {
    LOG_ERROR << "cannot start broker: " << server.status().ToString();
    return 1;
  }
  Status st = (*server)->Run();
  return st.ok() ? 0 : 1;
}
