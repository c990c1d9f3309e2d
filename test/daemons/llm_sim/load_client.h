// A load generator for HTTP/1.1 JSON endpoints: opens many concurrent
// keep-alive connections from one thread (non-blocking sockets + epoll),
// sends a fixed POST on each (optionally several in sequence), and records
// status codes, latencies and the peak number of open connections. Used by
// the matrix-llm-sim component tests and by the llm-sim-load bench tool.
// Thread-safety: RunLoad is self-contained; call it from any one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix::llm_sim::testing {

struct LoadOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int connections = 100;
  int requests_per_connection = 1;
  std::string path = "/v1/chat/completions";
  std::string body;  // JSON request body
  // When set, the body of request `request` (0-based) on connection
  // `connection`, instead of `body` (distinct prompts give distinct answers).
  std::function<std::string(int connection, int request)> body_for;
  int timeout_ms = 60000;
  int max_connecting = 256;  // connection attempts in flight at once
  bool keep_bodies = false;
  // Keep every connection open until all have finished, so the peak equals
  // the number of connections.
  bool hold_open = true;
};

struct LoadResult {
  int64_t responses = 0;  // complete HTTP responses
  int64_t ok = 0;         // responses with status 200
  int64_t failed_connections = 0;  // connect errors, resets, early EOF, timeouts
  std::map<int, int64_t> by_status;
  std::vector<double> latency_ms;  // one per response
  int peak_open = 0;
  double wall_ms = 0;
  std::vector<std::string> bodies;        // decoded bodies, when keep_bodies
  std::vector<std::string> error_samples;  // first few failure descriptions

  // p in [0, 100]; 0 when no latencies.
  double Percentile(double p) const;
};

// Raises RLIMIT_NOFILE as far as allowed, then runs the load. Unavailable when
// the epoll set cannot be created; per-connection failures are counted, not
// returned.
StatusOr<LoadResult> RunLoad(const LoadOptions& options);

}  // namespace matrix::llm_sim::testing
