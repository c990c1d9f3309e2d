// StoreConfig: everything matrix-store needs to start, as a plain struct with
// documented defaults. main.cc fills it from flags; tests fill it directly.
// Thread-safety: value type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/transport/transport.h"

namespace matrix::store {

struct StoreConfig {
  // Endpoint the ROUTER socket binds: "ipc:///run/x/store.sock" for local
  // workers, "tcp://10.0.0.3:*" (ephemeral port) for peers, "inproc://x" in
  // tests. The bound address is available from StoreServer::endpoint().
  std::string bind = "tcp://127.0.0.1:*";

  // When set, the bound endpoint is written to <run_dir>/endpoints/<name>
  // after binding, so workers on this node can find the store.
  std::string run_dir;
  std::string name = "store";

  // Node this store serves; reported in stats and logs (object references
  // carry it so readers know where an object lives).
  std::string node = "local";

  // Payload bytes held in memory. When a put would exceed it, the least
  // recently used objects are written to spill_dir; a put that still cannot
  // fit (no spill_dir, disk write error) fails with kResourceExhausted.
  int64_t memory_budget_bytes = int64_t{2} << 30;  // 2 GiB

  // Node-local directory for spilled objects (one file per object). Empty:
  // no spilling, the memory budget is a hard limit. Created if missing;
  // spill files are removed when the objects are freed and on shutdown.
  std::string spill_dir;

  // Lifetime of an object nobody frees (a lost task's leaked objects):
  // an object not put or read for this long is freed by the expiry sweep.
  // A Put item may carry its own ttl_ms.
  int64_t default_ttl_ms = int64_t{6} * 3600 * 1000;  // 6 h

  // Largest accepted object; larger puts fail with kInvalidArgument.
  int64_t max_object_bytes = int64_t{64} << 20;  // 64 MiB

  // "host:port" serving the store's Prometheus metrics at GET /metrics; port
  // 0 picks a free port. Empty: metrics are kept but not served. With
  // run_dir, the bound address is written to <run_dir>/endpoints/<name>.metrics.
  std::string metrics_bind;

  // How often the event loop runs the expiry sweep.
  int64_t sweep_interval_ms = 1000;

  // SIGTERM/SIGINT as an event: a signalfd (or any fd) whose readability
  // stops the server with a clean exit. -1: none (Stop() only).
  int signal_fd = -1;

  // The job's key pair: the socket then requires CURVE with it (workers of
  // every node fetch objects here). Unset: no authentication (ipc, tests).
  std::optional<transport::CurveKeyPair> keys;
};

}  // namespace matrix::store
