// BrokerCore: the queue and lease logic of matrix-broker, free of sockets so
// it runs on a FakeClock in unit tests. The BrokerServer feeds it decoded
// messages and sends what Dispatch() produces.
//
// Lifecycle of a message: Submit -> queued under its role -> Dispatch hands
// it to a worker with credit for that role under a new lease -> the worker's
// next Submit acknowledges the lease (credit +1) -> the lease and its copy of
// the message are dropped. A worker silent for `worker_timeout_ms` is dead:
// its leases go back to the head of their queues with deliveries + 1.
//
// Invariants:
//   - credit[w][r] + leases held by w for role r == capacity declared by w for r
//     (until w re-registers or dies).
//   - every lease id is in exactly one worker's lease set and in leases_.
//   - a message is either queued, or leased, never both.
// Thread-safety: not thread-safe; owned by the broker's event loop.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/base/clock.h"
#include "common/base/json.h"
#include "common/wire/control.h"

namespace matrix::broker {

struct BrokerConfig {
  std::string broker_id = "broker";
  uint32_t heartbeat_ms = 1000;        // interval both sides use
  uint32_t worker_timeout_ms = 3000;   // 3 missed heartbeats
  size_t max_batch = 256;              // tasks per Deliver message
};

// One message for one worker: a Deliver or a RegisterAck with payload frames.
struct Outgoing {
  std::string worker;
  wire::Control control;
  std::vector<std::string> payloads;
};

struct BrokerCounters {
  int64_t submitted = 0;      // task payloads accepted into queues
  int64_t delivered = 0;      // hand-outs (including redeliveries)
  int64_t redelivered = 0;    // leases returned by dead workers
  int64_t acked = 0;
  int64_t stale_acks = 0;     // acks for leases no longer held (after redelivery)
  int64_t requeued = 0;       // leases handed back unexecuted
  int64_t invalid = 0;        // malformed messages dropped
  int64_t workers_expired = 0;
  int64_t bytes_in = 0;       // task payload bytes received
  int64_t bytes_out = 0;      // task payload bytes delivered (redeliveries included)
  int64_t registrations = 0;  // registrations, re-registrations included
};

// The state of one role's queue and of its workers' credit.
struct RoleState {
  std::string role;
  size_t depth = 0;            // messages queued
  double oldest_age_s = 0;     // age of the message at the head; 0 when empty
  int64_t credit_free = 0;     // sum of the credit of the role's live workers
};

class BrokerCore {
 public:
  BrokerCore(BrokerConfig config, const Clock* clock);

  // Registers (or re-registers) a worker and its roles with capacity.
  void OnRegister(const std::string& worker, const wire::RegisterMsg& msg,
                  std::vector<Outgoing>* out);
  // payloads[i] belongs to the i-th item with has_payload (already verified).
  void OnSubmit(const std::string& worker, const wire::SubmitMsg& msg,
                std::vector<std::string>&& payloads);
  // Any message from a worker counts as a heartbeat.
  void OnSeen(const std::string& worker);
  bool IsRegistered(const std::string& worker) const { return workers_.count(worker) > 0; }
  void CountInvalid() { ++counters_.invalid; }

  // Expires silent workers (their leases are redelivered).
  void Tick();
  // Hands queued messages to workers with credit.
  void Dispatch(std::vector<Outgoing>* out);

  // Workers that have heard nothing from us for a heartbeat interval.
  std::vector<std::string> WorkersNeedingHeartbeat();
  void MarkSent(const std::string& worker);

  size_t QueueDepth(const std::string& role) const;
  // Every role ever queued to or served, sorted by name.
  std::vector<RoleState> RoleStates() const;
  size_t LeaseCount() const { return leases_.size(); }
  size_t WorkerCount() const { return workers_.size(); }
  const BrokerCounters& counters() const { return counters_; }
  Json Stats() const;

 private:
  struct Item {
    std::string payload;
    std::string task_id;
    uint32_t deliveries = 1;
    int64_t enqueue_us = 0;
  };
  struct Lease {
    std::string worker;
    std::string role;
    Item item;
  };
  struct Worker {
    std::map<std::string, uint32_t> capacity;
    std::map<std::string, uint32_t> credit;
    std::unordered_set<uint64_t> leases;
    int64_t last_seen_ns = 0;
    int64_t last_sent_ns = 0;
  };

  void Enqueue(const std::string& role, Item item, bool front);
  void ExpireWorker(const std::string& id);

  BrokerConfig config_;
  const Clock* clock_;
  std::unordered_map<std::string, std::deque<Item>> queues_;
  std::unordered_map<std::string, Worker> workers_;
  std::unordered_map<std::string, std::vector<std::string>> role_workers_;  // role -> workers
  std::unordered_map<std::string, size_t> rr_;                               // role -> next worker
  std::unordered_map<uint64_t, Lease> leases_;
  std::unordered_set<std::string> ready_roles_;  // roles with queued items
  uint64_t next_lease_ = 1;
  BrokerCounters counters_;
};

}  // namespace matrix::broker
