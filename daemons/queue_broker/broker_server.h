// BrokerServer: matrix-broker's event loop. Owns the ROUTER socket workers
// and clients connect to, decodes and verifies every message, drives
// BrokerCore, and sends deliveries and heartbeats. Stops on SIGTERM/SIGINT
// (a signalfd on the loop) or Stop(). Exports BrokerMetrics (refreshed every
// loop tick, ~100 ms) and, when `metrics_bind` is set, serves them at
// http://<metrics_bind>/metrics.
// With `nodes_dir`, links to peer brokers (see schemas/control.fbs, BROKER <->
// BROKER): discovered from the run directory every second, heartbeating
// with this broker's load, re-registering when the locally served roles
// change, reconnecting after 3 silent heartbeat intervals.
// Thread-safety: Run() on one thread; Stop() may be called from any thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/base/clock.h"
#include "common/base/event_loop.h"
#include "common/base/log_limiter.h"
#include "common/base/status.h"
#include "common/transport/transport.h"
#include "daemons/queue_broker/broker_core.h"

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
  // Many nodes: this broker's node, and <run_dir>/nodes, where the other
  // nodes' brokers publish <node>/endpoints/broker. Links go to the
  // `peer_fanout` nearest nodes in name order (both directions); each offers
  // `peer_window` credit per locally served role. Empty: no peers.
  std::string node;
  std::string nodes_dir;
  size_t peer_fanout = 8;
  uint32_t peer_window = 32;
  // The job's key pair: the socket requires CURVE with it (and only its
  // public key is admitted), links use it. Unset: no authentication (ipc).
  std::optional<transport::CurveKeyPair> keys;
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
  void Stop() { loop_->Stop(); }
  const std::string& endpoint() const;
  // "host:port" of the metrics server; empty when metrics are not served.
  std::string metrics_address() const;
  // What Run() does with every message its socket reads: frames[0] is the
  // peer's routing identity. Public for the fuzz target of the handler.
  void HandleMessage(std::vector<std::string>& frames);
  // The StatsReply body (what `matrix status` shows).
  std::string StatsJson() const;

 private:
  BrokerServer(BrokerServerConfig config, const Clock* clock);
  struct Link;
  // Counts a malformed message and logs it (rate-limited per peer).
  void Malformed(const std::string& peer, const std::string& why);
  void HandleLinkMessage(Link& link, std::vector<std::string>& frames);
  void SendAll(std::vector<Outgoing>& out);
  // Re-reads the peers in nodes_dir; links come and go on the loop.
  void DiscoverPeers();
  // Registers, heartbeats and reconnects links (every loop tick, ~100 ms).
  void TendLinks();
  // Acknowledges to peers the tasks handed on since the last call.
  void SendUpstreamAcks();
  void SendOnLink(Link& link, const wire::Control& control);
  // Brings the metrics up to date with core_'s counters and state.
  void UpdateMetrics();

  BrokerServerConfig config_;
  const Clock* clock_;
  std::unique_ptr<transport::Socket> socket_;
  BrokerCore core_;
  struct Metrics;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<EventLoop> loop_;
  std::vector<std::string> frames_;  // the handlers' receive buffer
  std::vector<Outgoing> out_;        // what a turn sends
  PeerLogLimiter malformed_log_;  // one warning per peer per 10 s
  std::map<std::string, std::unique_ptr<Link>> links_;  // by link name "link:<node>"
  transport::Context* ctx_ = nullptr;
  int64_t auth_failures_ = 0;
};

}  // namespace matrix::broker
