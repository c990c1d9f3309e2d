// Registration of StoreMetrics: names and help texts.
#include "common/metrics/store_metrics.h"

namespace matrix::metrics {

StoreMetrics::StoreMetrics(MetricsRegistry& r)
    : memory_objects(r.Gauge("matrix_store_memory_objects", "Objects held in memory.")),
      disk_objects(r.Gauge("matrix_store_disk_objects", "Objects held in spill files on disk.")),
      memory_bytes(r.Gauge("matrix_store_memory_bytes", "Object payload bytes held in memory.")),
      disk_bytes(r.Gauge("matrix_store_disk_bytes", "Object payload bytes held in spill files.")),
      memory_budget_bytes(r.Gauge("matrix_store_memory_budget_bytes",
                                  "Payload bytes the store may hold in memory before spilling.")),
      puts(r.Counter("matrix_store_puts_total", "Objects stored, idempotent repeats included.")),
      put_errors(r.Counter("matrix_store_put_errors_total",
                           "Puts rejected (size, checksum, conflicting id, no room).")),
      gets(r.Counter("matrix_store_gets_total", "Objects read successfully.")),
      get_misses(
          r.Counter("matrix_store_get_misses_total", "Reads of objects the store does not hold.")),
      frees(r.Counter("matrix_store_frees_total", "Objects freed by request.")),
      spills(r.Counter("matrix_store_spills_total",
                       "Objects written to disk to stay within the memory budget.")),
      promotions(
          r.Counter("matrix_store_promotions_total", "Spilled objects read back into memory.")),
      expirations(r.Counter("matrix_store_expirations_total",
                            "Objects freed because nobody read or freed them within their TTL.")),
      checksum_failures(r.Counter("matrix_store_checksum_failures_total",
                                  "Stored objects found corrupt on read (and dropped).")),
      invalid_messages(r.Counter("matrix_store_malformed_messages_total",
                                 "Malformed or unexpected messages dropped.")),
      auth_failures(r.Counter("matrix_store_auth_failures_total",
                              "Connections refused in the handshake: no CURVE or not the job's keys.")),
      request_duration_seconds(r.HistogramFamily("matrix_store_request_duration_seconds",
                                                 "Time to handle one request, by type.",
                                                 // 10 us .. 2.6 s: most requests take microseconds.
                                                 ExponentialBuckets(1e-5, 4, 10))) {}

}  // namespace matrix::metrics
