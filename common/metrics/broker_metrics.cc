// Registration of BrokerMetrics: names and help texts.
#include "common/metrics/broker_metrics.h"

namespace matrix::metrics {

BrokerMetrics::BrokerMetrics(MetricsRegistry& r)
    : queue_depth(r.GaugeFamily("matrix_broker_queue_depth",
                                "Orchestrator messages waiting in the role's queue.")),
      queue_oldest_age_seconds(
          r.GaugeFamily("matrix_broker_queue_oldest_age_seconds",
                        "Age of the oldest message waiting in the role's queue (0 when empty).")),
      credit_free(
          r.GaugeFamily("matrix_broker_credit_free",
                        "Messages workers of the role can take now (sum of their credit).")),
      leases_outstanding(r.Gauge("matrix_broker_leases_outstanding",
                                 "Messages delivered to workers and not yet acknowledged.")),
      workers(r.Gauge("matrix_broker_workers", "Workers registered and alive.")),
      messages_received(r.CounterFamily("matrix_broker_messages_received_total",
                                        "Well-formed control messages received, by type.")),
      messages_sent(
          r.CounterFamily("matrix_broker_messages_sent_total", "Control messages sent, by type.")),
      payload_received_bytes(r.Counter("matrix_broker_task_payload_received_bytes_total",
                                       "Task payload bytes accepted into the queues.")),
      payload_sent_bytes(r.Counter("matrix_broker_task_payload_sent_bytes_total",
                                   "Task payload bytes delivered to workers.")),
      tasks_submitted(r.Counter("matrix_broker_tasks_submitted_total",
                                "Orchestrator messages accepted into the queues.")),
      deliveries(r.Counter("matrix_broker_deliveries_total",
                           "Messages handed to workers under a lease, redeliveries included.")),
      redeliveries(r.Counter("matrix_broker_redeliveries_total",
                             "Leases of expired workers put back at the head of their queue.")),
      acks(r.Counter("matrix_broker_acks_total", "Leases acknowledged as done.")),
      stale_acks(r.Counter("matrix_broker_stale_acks_total",
                           "Acknowledgements for leases no longer held (already redelivered).")),
      requeues(
          r.Counter("matrix_broker_requeues_total", "Leases handed back unexecuted and requeued.")),
      invalid_messages(r.Counter("matrix_broker_malformed_messages_total",
                                 "Malformed or unexpected messages dropped.")),
      worker_registrations(r.Counter("matrix_broker_worker_registrations_total",
                                     "Worker registrations, re-registrations included.")),
      workers_expired(r.Counter("matrix_broker_workers_expired_total",
                                "Workers declared dead after missing their heartbeats.")),
      forwards(r.Counter("matrix_broker_forwards_total",
                         "Messages forwarded to another node's broker: their role is not served here.")),
      steals(r.Counter("matrix_broker_steals_total",
                       "Messages of a saturated role taken by a less loaded node's broker.")),
      tasks_from_peers(r.Counter("matrix_broker_tasks_from_peers_total",
                                 "Messages received from other nodes' brokers (forwards and steals).")),
      auth_failures(r.Counter("matrix_broker_auth_failures_total",
                              "Connections refused in the handshake: no CURVE or not the job's keys.")),
      peers(r.Gauge("matrix_broker_peers", "Other nodes' brokers linked to this one and alive.")),
      load(r.Gauge("matrix_broker_load",
                    "Queued and running work of locally served roles over local worker capacity.")) {}

}  // namespace matrix::metrics
