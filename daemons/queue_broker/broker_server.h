// BrokerServer: matrix-broker's event loop. Owns the ROUTER socket workers
// and clients connect to, decodes and verifies every message, drives
// BrokerCore, and sends deliveries and heartbeats. Stops on SIGTERM/SIGINT
// (polled as a signalfd) or Stop().
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
};

class BrokerServer {
 public:
  static StatusOr<std::unique_ptr<BrokerServer>> Create(BrokerServerConfig config,
                                                        transport::Context* ctx,
                                                        const Clock* clock);
  ~BrokerServer();
  // Runs until a signal or Stop(). Returns OK on a clean stop.
  Status Run();
  void Stop() { stop_ = true; }
  const std::string& endpoint() const;

 private:
  BrokerServer(BrokerServerConfig config, const Clock* clock);
  void HandleMessage(std::vector<std::string>& frames);
  void SendAll(std::vector<Outgoing>& out);

  BrokerServerConfig config_;
  const Clock* clock_;
  std::unique_ptr<transport::Socket> socket_;
  BrokerCore core_;
  std::atomic<bool> stop_{false};
  int64_t invalid_logged_ = 0;
};

}  // namespace matrix::broker
