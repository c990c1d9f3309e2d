// BrokerMetrics: every metric matrix-broker exports, declared in one place.
// Gauges are refreshed from the broker's state once per loop tick; counters
// are advanced by the broker's own counts at the same tick, except messages
// by type, which the server counts as it receives and sends them.
// Thread-safety: a plain struct of handles; see common/metrics/metrics.h.
#pragma once

#include "common/metrics/metrics.h"

namespace matrix::metrics {

struct BrokerMetrics {
  // Handles that record nothing.
  BrokerMetrics() = default;
  // Registers every broker metric in `registry`.
  explicit BrokerMetrics(MetricsRegistry& registry);

  // Per role (label `role`).
  GaugeFamily queue_depth;               // matrix_broker_queue_depth
  GaugeFamily queue_oldest_age_seconds;  // matrix_broker_queue_oldest_age_seconds
  GaugeFamily credit_free;               // matrix_broker_credit_free

  Gauge leases_outstanding;  // matrix_broker_leases_outstanding
  Gauge workers;             // matrix_broker_workers

  // Control messages by wire type (label `type`: register, submit, ...).
  CounterFamily messages_received;  // matrix_broker_messages_received_total
  CounterFamily messages_sent;      // matrix_broker_messages_sent_total

  Counter payload_received_bytes;  // matrix_broker_task_payload_received_bytes_total
  Counter payload_sent_bytes;      // matrix_broker_task_payload_sent_bytes_total
  Counter tasks_submitted;         // matrix_broker_tasks_submitted_total
  Counter deliveries;              // matrix_broker_deliveries_total
  Counter redeliveries;            // matrix_broker_redeliveries_total
  Counter acks;                    // matrix_broker_acks_total
  Counter stale_acks;              // matrix_broker_stale_acks_total
  Counter requeues;                // matrix_broker_requeues_total
  Counter invalid_messages;        // matrix_broker_malformed_messages_total
  Counter worker_registrations;    // matrix_broker_worker_registrations_total
  Counter workers_expired;         // matrix_broker_workers_expired_total
  Counter forwards;                // matrix_broker_forwards_total
  Counter steals;                  // matrix_broker_steals_total
  Counter tasks_from_peers;        // matrix_broker_tasks_from_peers_total
  Counter auth_failures;           // matrix_broker_auth_failures_total
  Gauge peers;                     // matrix_broker_peers
  Gauge load;                      // matrix_broker_load
};

}  // namespace matrix::metrics
