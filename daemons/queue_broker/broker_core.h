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
// Peers: another node's broker links in like a worker (Register.peer) and
// serves the roles its own workers serve, with a small credit window. After
// the local workers had their turn, the rest of a role's queue goes to peers:
// every task for a role no local worker serves (a forward), and, when the
// local workers have no credit left, not-yet-moved tasks for a peer whose
// advertised load is lower than ours by `steal_margin` (a steal). A task
// received from a peer (OnPeerDeliver) is acknowledged upstream once it is
// handed on, so the peer keeps it under lease until then.
//
// Bound queues: a role named "<role>@<worker>" is served by that worker only
// (steps that must run next to the task's tool-environment session). When
// the worker expires, or such a queue stays unserved for two worker timeouts,
// its tasks move to the queue "<role>".
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
  float steal_margin = 0.25f;          // a peer takes load only when this much less loaded
};

// One message for one worker: a Deliver or a RegisterAck with payload frames.
struct Outgoing {
  std::string worker;
  wire::Control control;
  std::string payloads;  // the Deliver's task payloads, packed (wire::PackPayloads)
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
  int64_t forwarded = 0;      // tasks handed to a peer: role not served here
  int64_t stolen = 0;         // tasks handed to a less loaded peer
  int64_t from_peers = 0;     // tasks received from peers
  int64_t peer_bytes_in = 0;  // payload bytes of those
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
  // A heartbeat; a peer's carries its load.
  void OnHeartbeat(const std::string& worker, const wire::HeartbeatMsg& msg);
  // A task a peer delivered over our link `link` under its lease; queued
  // here and acked upstream (TakeUpstreamAcks) once handed on.
  void OnPeerDeliver(const std::string& link, const wire::DeliverItem& item, std::string payload);
  // (link, lease) pairs to acknowledge to peers since the last call.
  std::vector<std::pair<std::string, uint64_t>> TakeUpstreamAcks();
  // Roles served by local workers with the credit window a link offers for
  // each, sorted: what this broker registers at its peers.
  std::vector<std::pair<std::string, uint32_t>> PeerOffer(uint32_t window) const;
  // The load of the most loaded locally served role: (queued + leased to
  // local workers) / the local workers' capacity for it; above 1 work waits.
  // Updated by Tick(). 0 with no local workers. Peers advertise theirs, and
  // a role's work goes to a peer only when the peer's load is lower than the
  // role's by steal_margin.
  float Load() const { return load_; }
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
    std::string upstream;         // link it came in on; empty: submitted here
    uint64_t upstream_lease = 0;  // the peer's lease, until acked
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
    bool peer = false;
    float load = 0;
  };

  void Enqueue(const std::string& role, Item item, bool front);
  void ExpireWorker(const std::string& id);
  void MoveQueue(const std::string& from, const std::string& to);
  void MoveOrphanedQueues(int64_t now);
  // Leases up to n items from the head of role's queue to `wid`.
  void HandOut(const std::string& wid, Worker& w, const std::string& role, size_t n,
               std::unordered_map<std::string, size_t>& slot, std::vector<Outgoing>* out);
  void OfferToPeers(const std::string& role, std::unordered_map<std::string, size_t>& slot,
                    std::vector<Outgoing>* out);

  BrokerConfig config_;
  const Clock* clock_;
  std::unordered_map<std::string, std::deque<Item>> queues_;
  std::unordered_map<std::string, Worker> workers_;
  std::unordered_map<std::string, std::vector<std::string>> role_workers_;  // role -> local workers
  std::unordered_map<std::string, std::vector<std::string>> role_peers_;    // role -> peer links
  std::unordered_map<std::string, size_t> rr_;                               // role -> next worker
  std::unordered_map<uint64_t, Lease> leases_;
  std::unordered_set<std::string> ready_roles_;  // roles with queued items
  uint64_t next_lease_ = 1;
  BrokerCounters counters_;
  std::vector<std::pair<std::string, uint64_t>> upstream_acks_;
  float load_ = 0;
  std::unordered_map<std::string, float> role_load_;
  std::unordered_map<std::string, int64_t> orphaned_since_;  // bound queue -> first seen unserved
};

}  // namespace matrix::broker
