// SimMetrics: every metric matrix-llm-sim exports, declared in one place.
// Label values: endpoint is the API path served ("/v1/chat/completions",
// "/v1/models", "/health"; any other path as "other"), status the HTTP status
// code ("200", "429"), kind the injected fault ("timeout", "http_500", ...).
// Thread-safety: a plain struct of handles; see common/metrics/metrics.h.
#pragma once

#include <string>

#include "common/metrics/metrics.h"

namespace matrix::metrics {

struct SimMetrics {
  // Handles that record nothing.
  SimMetrics() = default;
  // Registers every simulator metric in `registry`.
  explicit SimMetrics(MetricsRegistry& registry);

  // matrix_sim_requests_total{endpoint,status}
  Counter Request(const std::string& endpoint, int http_status) const;
  // matrix_sim_faults_injected_total{kind}
  Counter Fault(const std::string& kind) const;

  Gauge active_sequences;           // matrix_sim_active_sequences
  Gauge queued_sequences;           // matrix_sim_queued_sequences
  Counter generated_tokens;         // matrix_sim_generated_tokens_total
  Histogram batch_size;             // matrix_sim_batch_size
  Histogram step_duration_seconds;  // matrix_sim_step_duration_seconds

  // Families behind the accessors above.
  CounterFamily requests;
  CounterFamily faults_injected;
};

}  // namespace matrix::metrics
