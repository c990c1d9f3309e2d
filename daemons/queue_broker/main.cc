// matrix-broker: this node's queues of orchestrator messages, one per role.
//   matrix-broker --bind EP [--run-dir DIR] [--name NAME] [--metrics HOST:PORT]
//                 [--node NODE --nodes-dir RUN/nodes] [--keys-dir RUN] [--peer-fanout 8]
// --keys-dir: require CURVE with the job keys in RUN/keys/job.key. --nodes-dir:
// link to the peer brokers published there.
#include <signal.h>
#include <unistd.h>

#include "common/base/flags.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/transport/job_keys.h"
#include "common/transport/transport.h"
#include "daemons/queue_broker/broker_server.h"

int main(int argc, char** argv) {
  using namespace matrix;
  SetLogComponent("broker");
  auto flags = Flags::Parse(argc, argv, {"bind", "run-dir", "name", "heartbeat-ms", "worker-timeout-ms",
                                         "max-batch", "metrics", "log-level", "node", "nodes-dir", "keys-dir",
                                         "peer-fanout", "peer-window", "stop-signal"});
  if (!flags.ok()) {
    LOG_ERROR << flags.status().message();
    return 2;
  }
  if (flags->Get("log-level") == "debug") SetLogLevel(LogLevel::kDebug);
  auto sigfd = CreateStopSignalFd(flags->Get("stop-signal"));
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
  config.node = flags->Get("node");
  // Process ids repeat across nodes: a peer's link identity must not.
  if (!config.node.empty()) config.core.broker_id = config.node + "/" + config.core.broker_id;
  config.nodes_dir = flags->Get("nodes-dir");
  config.peer_fanout = static_cast<size_t>(flags->GetInt("peer-fanout", 8));
  config.peer_window = static_cast<uint32_t>(flags->GetInt("peer-window", 32));
  if (!config.nodes_dir.empty() && config.node.empty()) {
    LOG_ERROR << "--nodes-dir needs --node";
    return 2;
  }
  if (!flags->Get("keys-dir").empty()) {
    auto keys = transport::LoadJobKeys(flags->Get("keys-dir"));
    if (!keys.ok()) {
      LOG_ERROR << keys.status().message();
      return 2;
    }
    config.keys = *keys;
  }

  transport::Context ctx;
  auto server = broker::BrokerServer::Create(config, &ctx, SystemClock::Get());
  if (!server.ok()) {
    LOG_ERROR << "cannot start broker: " << server.status().ToString();
    return 1;
  }
  Status st = (*server)->Run();
  return st.ok() ? 0 : 1;
}
