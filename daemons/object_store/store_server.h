// StoreServer: matrix-store's event loop. Owns the ROUTER socket that workers
// connect to, verifies every message (envelope decode, payload frame count),
// answers Put / Get / Free / StatsRequest from an ObjectTable, and runs the
// TTL expiry sweep. A malformed message is counted, logged (at most once per
// second) and dropped; the peer gets no reply and the loop keeps serving.
// StoreMetrics are refreshed every loop iteration and, when
// config.metrics_bind is set, served at http://<metrics_bind>/metrics.
//
// Protocol details beyond schemas/control.fbs:
//   - A failed item carries ok=false and error = Status::ToString() of the
//     failure ("NOT_FOUND: object 00..2a not found"), so clients recover the
//     canonical code from the text before the first ": ".
//   - Put items: `size` must equal the payload frame's length and `checksum`
//     its Hash64; otherwise that item fails with DATA_LOSS.
//   - GetReply items carry the object's size and checksum; the payload frame
//     is empty for a failed item.
//
// Lifecycle: Create() binds (the metrics address too) and writes the endpoint
// files; Run() serves until the configured signal fd becomes readable or
// Stop() is called.
// Thread-safety: Run()/RunOnce() and the accessors on one thread; Stop() from
// any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/base/clock.h"
#include "common/base/event_loop.h"
#include "common/base/log_limiter.h"
#include "common/base/status.h"
#include "daemons/object_store/object_table.h"
#include "daemons/object_store/store_config.h"

namespace matrix::transport {
class Context;
class Socket;
}  // namespace matrix::transport

namespace matrix::store {

struct StoreServerStats {
  ObjectTableStats table;
  int64_t messages = 0;            // well-formed requests handled
  int64_t malformed_messages = 0;  // dropped: undecodable or inconsistent
  int64_t send_failures = 0;       // replies to peers that had gone
};

class StoreServer {
 public:
  // Binds config.bind (and config.metrics_bind when set), creates the spill
  // directory and, when config.run_dir is set, writes
  // <run_dir>/endpoints/<name> (and <name>.metrics). kUnavailable when a bind
  // fails, kFailedPrecondition for an unusable config, kInvalidArgument for a
  // malformed metrics address. `ctx` and `clock` must outlive the server.
  static StatusOr<std::unique_ptr<StoreServer>> Create(StoreConfig config, transport::Context* ctx,
                                                       const Clock* clock);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  // Serves until the signal fd is readable or Stop() is called; returns OK
  // on such a clean stop.
  Status Run();
  // One turn of the loop: runs the expiry sweep when due, waits up to
  // timeout_ms for messages and handles those queued. Tests drive it directly.
  void RunOnce(int timeout_ms);
  // Makes Run() return soon. Safe from any thread and from signal handlers.
  void Stop();
  bool stopping() const { return loop_->stopping(); }

  // The bound endpoint (the real port for "tcp://host:*").
  const std::string& endpoint() const;
  // "host:port" of the metrics server; empty when metrics are not served.
  std::string metrics_address() const;
  StoreServerStats stats() const;
  // The StatsReply body: every counter of stats() plus the node name.
  std::string StatsJson() const;
  // What RunOnce() does with every message its socket reads: frames[0] is the
  // peer's routing identity. Public for the fuzz target of the handler.
  void HandleMessage(std::vector<std::string>& frames);

 private:
  StoreServer(StoreConfig config, const Clock* clock, std::unique_ptr<ObjectTable> table);
  void Malformed(const std::string& peer, const std::string& why);
  void Reply(std::vector<std::string> frames);
  // Frees expired objects and counts refused handshakes (every sweep_interval_ms).
  void Sweep();
  // Brings the metrics up to date with the table's and the server's counts.
  void UpdateMetrics();

  StoreConfig config_;
  const Clock* clock_;
  std::unique_ptr<ObjectTable> table_;
  std::unique_ptr<transport::Socket> socket_;
  std::unique_ptr<EventLoop> loop_;
  PeerLogLimiter malformed_log_;  // one warning per peer per 10 s
  StoreServerStats stats_;
  struct Metrics;
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace matrix::store
