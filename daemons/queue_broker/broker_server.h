// BrokerServer: matrix-broker's event loop. Owns the ROUTER socket workers
// and clients connect to, decodes and verifies every message, drives
// BrokerCore, and sends deliveries and heartbeats. Stops on SIGTERM/SIGINT
// (polled as a signalfd) or Stop(). Exports BrokerMetrics (refreshed every
// loop tick, ~100 ms) and, when `metrics_bind` is set, serves them at
// http://<metrics_bind>/metrics.
// Thread-safety: Run() on one thread; Stop() may be called from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "common/base/clock.h"
#include "common/base/status.h"
#include "daemons/queue_broker/broker_core.h"

namespace matrix::transport {
class Context;
class Socket;
}  // namespace matrix::transport

namespace matrix::broker {

struct BrokerServerConfig {
  BrokerConfig core;
  std::string bind = "tcp://127.0.0.1:*";  // endpoint to bind
  std::string run_dir;                     // when set, writes endpoints/<name>
  std::string name = "broker";
  size_t max_message_bytes = 64 << 20;
  int signal_fd = -1;                      // SIGTERM/SIGINT as events; -1: none
  // "host:port" serving GET /metrics (port 0: any free port); empty: metrics
  // are kept but not served. With run_dir, the bound address goes to
  // endpoints/<name>.metrics.
  std::string metrics_bind;
};

class BrokerServer {
 public:
  // Binds `bind` (and `metrics_bind` when set) and writes the endpoint files.
  // kUnavailable when an address cannot be bound, kInvalidArgument for a
  // malformed metrics address.
  static StatusOr<std::unique_ptr<BrokerServer>> Create(BrokerServerConfig config,
                                                        transport::Context* ctx,
                                                        const Clock* clock);
  ~BrokerServer();
  // Runs until a signal or Stop(). Returns OK on a clean stop.
  Status Run();
  void Stop() { stop_ = true; }
  const std::string& endpoint() const;
  // "host:port" of the metrics server; empty when metrics are not served.
  std::string metrics_address() const;

 private:
  BrokerServer(BrokerServerConfig config, const Clock* clock);
  void HandleMessage(std::vector<std::string>& frames);
  void SendAll(std::vector<Outgoing>& out);
  // Brings the metrics up to date with core_'s counters and state.
  void UpdateMetrics();

  BrokerServerConfig config_;
  const Clock* clock_;
  std::unique_ptr<transport::Socket> socket_;
  BrokerCore core_;
  struct Metrics;
  std::unique_ptr<Metrics> metrics_;
  std::atomic<bool> stop_{false};
  int64_t invalid_logged_ = 0;
};

}  // namespace matrix::broker
