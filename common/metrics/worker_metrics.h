// WorkerMetrics: every metric matrix-worker exports, declared in one place.
// Series with labels are resolved once per role / model / endpoint through
// the For*() accessors and kept; recording on a resolved handle is a single
// atomic (or, for histograms, a short lock).
//
// Label values: role and model names from the pipeline, endpoint the LLM
// server's base URL, kind a small fixed set of error classes or refusal
// reasons. Never task ids.
// Thread-safety: a plain struct of handles; see common/metrics/metrics.h.
#pragma once

#include <string>

#include "common/metrics/metrics.h"

namespace matrix::metrics {

// Series of one role.
struct WorkerRoleMetrics {
  Gauge in_flight;                  // matrix_worker_tasks_in_flight{role}
  Histogram step_duration_seconds;  // matrix_worker_step_duration_seconds{role}
  Histogram queue_wait_seconds;     // matrix_worker_queue_wait_seconds{role}
};

// Series of one model served by one endpoint.
struct WorkerLlmEndpointMetrics {
  Counter requests;  // matrix_worker_llm_requests_total{model,endpoint}
  Counter retries;   // matrix_worker_llm_retries_total{model,endpoint}
};

// Series of one model, over all its endpoints.
struct WorkerLlmModelMetrics {
  Histogram request_duration_seconds;  // matrix_worker_llm_request_duration_seconds{model}
  Counter prompt_tokens;               // matrix_worker_llm_prompt_tokens_total{model}
  Counter completion_tokens;           // matrix_worker_llm_completion_tokens_total{model}
};

struct WorkerMetrics {
  // Handles that record nothing.
  WorkerMetrics() = default;
  // Registers every worker metric in `registry`.
  explicit WorkerMetrics(MetricsRegistry& registry);

  WorkerRoleMetrics ForRole(const std::string& role) const;
  WorkerLlmEndpointMetrics ForLlmEndpoint(const std::string& model,
                                          const std::string& endpoint) const;
  WorkerLlmModelMetrics ForLlmModel(const std::string& model) const;
  // matrix_worker_llm_errors_total{model,endpoint,kind}; kind is the error
  // class ("timeout", "connect", "http_429", "http_5xx", "http_4xx", "parse").
  Counter LlmError(const std::string& model, const std::string& endpoint,
                   const std::string& kind) const;
  // matrix_worker_refused_messages_total{kind}; kind says why ("malformed",
  // "unknown_role", "too_large", ...).
  Counter Refused(const std::string& kind) const;

  // Tasks by outcome: matrix_worker_tasks_total{status}.
  Counter tasks_admitted;  // status="admitted": read from the source into the pipeline
  Counter tasks_done;      // status="done": written to the output
  Counter tasks_failed;    // status="failed": ended by an error after retries
  Counter tasks_lost;      // status="lost": given up after too many deliveries
  Counter tasks_filtered;  // status="filtered": dropped by a pipeline condition

  Counter store_cache_hits;     // matrix_worker_store_cache_hits_total
  Counter store_cache_misses;   // matrix_worker_store_cache_misses_total
  Counter store_remote_fetches;  // matrix_worker_store_remote_fetches_total
  Counter offloaded_bytes;      // matrix_worker_store_offloaded_bytes_total
  Histogram hop_bytes;          // matrix_worker_hop_message_bytes
  Counter records_written;      // matrix_worker_records_written_total
  Counter duplicates_absorbed;  // matrix_worker_duplicates_absorbed_total
  Counter output_write_errors;  // matrix_worker_output_write_errors_total: failed record writes (full disk, I/O)
  Gauge output_blocked_records; // matrix_worker_output_blocked_records: records waiting for the output to take them

  // Tool environments (MCP sessions) and exec programs.
  Gauge env_sessions;             // matrix_worker_env_sessions: live sessions
  Gauge env_sessions_waiting;     // matrix_worker_env_sessions_waiting: tasks waiting for one
  Counter env_sessions_started;   // matrix_worker_env_sessions_started_total
  Counter env_tool_calls;         // matrix_worker_env_calls_total
  Counter env_timeouts;           // matrix_worker_env_timeouts_total: killed past their time limit
  Counter env_deaths;             // matrix_worker_env_deaths_total: processes that ended on their own
  Counter env_programs;           // matrix_worker_exec_programs_total: one-shot exec runs

  // Families behind the accessors above.
  CounterFamily tasks;
  GaugeFamily in_flight;
  HistogramFamily step_duration_seconds;
  HistogramFamily queue_wait_seconds;
  CounterFamily llm_requests;
  CounterFamily llm_errors;
  CounterFamily llm_retries;
  HistogramFamily llm_request_duration_seconds;
  CounterFamily llm_prompt_tokens;
  CounterFamily llm_completion_tokens;
  CounterFamily refused_messages;
};

}  // namespace matrix::metrics
