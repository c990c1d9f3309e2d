// Registration of WorkerMetrics: names, help texts and label sets.
#include "common/metrics/worker_metrics.h"

namespace matrix::metrics {

WorkerMetrics::WorkerMetrics(MetricsRegistry& r)
    : store_cache_hits(r.Counter("matrix_worker_store_cache_hits_total",
                                 "Object reads served from the worker's local cache.")),
      store_cache_misses(r.Counter("matrix_worker_store_cache_misses_total",
                                   "Object reads that had to go to an object store.")),
      store_remote_fetches(r.Counter("matrix_worker_store_remote_fetches_total",
                                     "Objects fetched from another node's store.")),
      offloaded_bytes(r.Counter("matrix_worker_store_offloaded_bytes_total",
                                "Bytes of large fields moved into the object store.")),
      hop_bytes(r.Histogram("matrix_worker_hop_message_bytes",
                            "Size of an orchestrator message sent to the next hop.",
                            SizeBuckets())),
      records_written(
          r.Counter("matrix_worker_records_written_total", "Output records written by sinks.")),
      duplicates_absorbed(r.Counter("matrix_worker_duplicates_absorbed_total",
                                    "Repeated results of a redelivered task that were dropped.")),
      output_write_errors(r.Counter("matrix_worker_output_write_errors_total",
                                    "Record writes that failed (full disk, I/O error); the records are kept and retried.")),
      output_blocked_records(r.Gauge("matrix_worker_output_blocked_records",
                                     "Finished tasks whose records wait for the output file to take them.")),
      env_sessions(r.Gauge("matrix_worker_env_sessions", "Live tool-environment sessions (one per task).")),
      env_sessions_waiting(r.Gauge("matrix_worker_env_sessions_waiting",
                                   "Tasks waiting for a tool-environment session (the pool is full).")),
      env_sessions_started(r.Counter("matrix_worker_env_sessions_started_total",
                                     "Tool-environment sessions started.")),
      env_tool_calls(r.Counter("matrix_worker_env_calls_total", "Requests sent to tool environments (tool calls, rewards).")),
      env_timeouts(r.Counter("matrix_worker_env_timeouts_total",
                             "Environment calls and exec programs killed past their time limit.")),
      env_deaths(r.Counter("matrix_worker_env_deaths_total",
                           "Environment processes that ended on their own (crash, limit, kill).")),
      env_programs(r.Counter("matrix_worker_exec_programs_total", "One-shot exec programs run.")),
      tasks(r.CounterFamily("matrix_worker_tasks_total",
                            "Tasks by status: admitted, done, failed, lost, filtered.")),
      in_flight(r.GaugeFamily("matrix_worker_tasks_in_flight",
                              "Orchestrator messages this worker is processing, by role.")),
      step_duration_seconds(r.HistogramFamily("matrix_worker_step_duration_seconds",
                                              "Time to handle one step of a task, by role.",
                                              LatencyBuckets())),
      queue_wait_seconds(
          r.HistogramFamily("matrix_worker_queue_wait_seconds",
                            "Time a message waited in the broker's queue before delivery, by role.",
                            LatencyBuckets())),
      llm_requests(r.CounterFamily("matrix_worker_llm_requests_total",
                                   "LLM requests sent, by model and endpoint.")),
      llm_errors(r.CounterFamily("matrix_worker_llm_errors_total",
                                 "Failed LLM requests, by model, endpoint and error kind.")),
      llm_retries(r.CounterFamily("matrix_worker_llm_retries_total",
                                  "LLM requests retried, by model and endpoint.")),
      llm_request_duration_seconds(
          r.HistogramFamily("matrix_worker_llm_request_duration_seconds",
                            "Time from sending an LLM request to its complete response, by model.",
                            LatencyBuckets())),
      llm_prompt_tokens(r.CounterFamily("matrix_worker_llm_prompt_tokens_total",
                                        "Prompt tokens reported by LLM servers, by model.")),
      llm_completion_tokens(
          r.CounterFamily("matrix_worker_llm_completion_tokens_total",
                          "Completion tokens reported by LLM servers, by model.")),
      refused_messages(r.CounterFamily("matrix_worker_refused_messages_total",
                                       "Messages the worker refused, by reason.")) {
  tasks_admitted = tasks.With({{"status", "admitted"}});
  tasks_done = tasks.With({{"status", "done"}});
  tasks_failed = tasks.With({{"status", "failed"}});
  tasks_lost = tasks.With({{"status", "lost"}});
  tasks_filtered = tasks.With({{"status", "filtered"}});
}

WorkerRoleMetrics WorkerMetrics::ForRole(const std::string& role) const {
  const Labels l{{"role", role}};
  return {in_flight.With(l), step_duration_seconds.With(l), queue_wait_seconds.With(l)};
}

WorkerLlmEndpointMetrics WorkerMetrics::ForLlmEndpoint(const std::string& model,
                                                       const std::string& endpoint) const {
  const Labels l{{"model", model}, {"endpoint", endpoint}};
  return {llm_requests.With(l), llm_retries.With(l)};
}

WorkerLlmModelMetrics WorkerMetrics::ForLlmModel(const std::string& model) const {
  const Labels l{{"model", model}};
  return {llm_request_duration_seconds.With(l), llm_prompt_tokens.With(l),
          llm_completion_tokens.With(l)};
}

Counter WorkerMetrics::LlmError(const std::string& model, const std::string& endpoint,
                                const std::string& kind) const {
  return llm_errors.With({{"model", model}, {"endpoint", endpoint}, {"kind", kind}});
}

Counter WorkerMetrics::Refused(const std::string& kind) const {
  return refused_messages.With({{"kind", kind}});
}

}  // namespace matrix::metrics
