// StoreMetrics: every metric matrix-store exports, declared in one place.
// Object and byte gauges and the operation counters are refreshed from the
// object table once per loop iteration; request latency is observed per
// request.
// Thread-safety: a plain struct of handles; see common/metrics/metrics.h.
#pragma once

#include "common/metrics/metrics.h"

namespace matrix::metrics {

struct StoreMetrics {
  // Handles that record nothing.
  StoreMetrics() = default;
  // Registers every store metric in `registry`.
  explicit StoreMetrics(MetricsRegistry& registry);

  Gauge memory_objects;       // matrix_store_memory_objects
  Gauge disk_objects;         // matrix_store_disk_objects
  Gauge memory_bytes;         // matrix_store_memory_bytes
  Gauge disk_bytes;           // matrix_store_disk_bytes
  Gauge memory_budget_bytes;  // matrix_store_memory_budget_bytes

  Counter puts;               // matrix_store_puts_total
  Counter put_errors;         // matrix_store_put_errors_total
  Counter gets;               // matrix_store_gets_total
  Counter get_misses;         // matrix_store_get_misses_total
  Counter frees;              // matrix_store_frees_total
  Counter spills;             // matrix_store_spills_total
  Counter promotions;         // matrix_store_promotions_total
  Counter expirations;        // matrix_store_expirations_total
  Counter checksum_failures;  // matrix_store_checksum_failures_total
  Counter invalid_messages;   // matrix_store_malformed_messages_total
  Counter auth_failures;      // matrix_store_auth_failures_total

  // Time to handle one request, by type (label `type`: put, get, free, stats).
  HistogramFamily request_duration_seconds;  // matrix_store_request_duration_seconds
};

}  // namespace matrix::metrics
