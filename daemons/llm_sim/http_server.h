// HttpServer: the HTTP/1.1 front end of matrix-llm-sim. An OpenAI-compatible
// API (POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
// GET /health, GET /stats) over keep-alive connections, answering through the
// SimEngine timing model, the content model and the fault injector.
//
// Faults (SimConfig fault_*) apply to the two completion endpoints only and
// are decided before the request is validated, as a rate limiter or a failing
// proxy in front of an engine would; the other endpoints always answer.
//
// Metrics (SimMetrics, served on config.metrics): requests by endpoint and
// status, injected faults, batch occupancy and queue, engine step sizes and
// durations, generated tokens.
//
// Lifecycle: Create() binds and listens (connections queue in the backlog),
// PublishAddress() writes the port and endpoint files, Run() serves until
// SIGTERM/SIGINT (handled as events on the loop) or Stop(), then returns;
// destroying the server closes every connection.
//
// Threading: one io_context run by config.threads threads (default 1). Each
// connection lives on its own strand and the engine on another, so with one
// thread everything runs on that thread and no locks are taken on the hot
// path. Stop() may be called from any thread. Boost headers stay inside
// http_server.cc.
#pragma once

#include <memory>
#include <string>

#include "common/base/clock.h"
#include "common/base/status.h"
#include "daemons/llm_sim/sim_config.h"
#include "daemons/llm_sim/sim_stats.h"

namespace matrix::llm_sim {

class HttpServer {
 public:
  // Binds config.listen (port 0: ephemeral) and, when config.metrics is set,
  // starts the /metrics server there. InvalidArgument for an address
  // that cannot be parsed or resolved, Unavailable when bind/listen fails.
  // REQUIRES: ValidateSimConfig(config).ok(); `clock` is monotonic real time
  // (it paces the engine timer) and outlives the server.
  static StatusOr<std::unique_ptr<HttpServer>> Create(const SimConfig& config, const Clock* clock);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound "host:port" (IPv6 hosts in brackets).
  const std::string& address() const;
  // "host:port" of the /metrics server (SimMetrics); empty when config.metrics
  // is empty.
  std::string metrics_address() const;

  // Writes address() to config.port_file (atomically) and, when config.run_dir
  // is set, metrics_address() to <run_dir>/endpoints/<name>.metrics (when
  // served) and "http://host:port/v1" to <run_dir>/endpoints/<name>; a wildcard
  // bind address is advertised as this host's name. Unavailable on I/O errors.
  Status PublishAddress() const;

  // Serves until SIGTERM/SIGINT or Stop(). Returns once every loop thread has
  // stopped; pending requests are abandoned (their connections close when the
  // server is destroyed).
  void Run();
  // Makes Run() return. Thread-safe.
  void Stop();

  const SimStats& stats() const;

  class Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Raises the soft RLIMIT_NOFILE to the hard limit (each connection is a file
// descriptor); returns the resulting soft limit.
int64_t RaiseOpenFileLimit();

}  // namespace matrix::llm_sim
