// Registration of SimMetrics: names, help texts and label sets.
#include "common/metrics/sim_metrics.h"

namespace matrix::metrics {

SimMetrics::SimMetrics(MetricsRegistry& r)
    : active_sequences(r.Gauge("matrix_sim_active_sequences",
                               "Sequences being generated in the current batch.")),
      queued_sequences(
          r.Gauge("matrix_sim_queued_sequences", "Requests waiting for a slot in the batch.")),
      generated_tokens(
          r.Counter("matrix_sim_generated_tokens_total", "Completion tokens generated.")),
      batch_size(r.Histogram("matrix_sim_batch_size", "Sequences advanced by one engine step.",
                             CountBuckets())),
      step_duration_seconds(r.Histogram(
          "matrix_sim_step_duration_seconds",
          "Duration of one engine step (prefill or decode of the batch).", LatencyBuckets())),
      requests(r.CounterFamily("matrix_sim_requests_total",
                               "HTTP requests answered, by API endpoint and status code.")),
      faults_injected(r.CounterFamily("matrix_sim_faults_injected_total",
                                      "Faults injected into responses, by kind.")) {}

Counter SimMetrics::Request(const std::string& endpoint, int http_status) const {
  return requests.With({{"endpoint", endpoint}, {"status", std::to_string(http_status)}});
}

Counter SimMetrics::Fault(const std::string& kind) const {
  return faults_injected.With({{"kind", kind}});
}

}  // namespace matrix::metrics
