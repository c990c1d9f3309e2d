#include "daemons/queue_broker/broker_core.h"

#include <algorithm>

#include "common/base/log.h"
#include "common/wire/codec.h"

namespace matrix::broker {

BrokerCore::BrokerCore(BrokerConfig config, const Clock* clock)
    : config_(std::move(config)), clock_(clock) {}

void BrokerCore::OnSeen(const std::string& worker) {
  auto it = workers_.find(worker);
  if (it != workers_.end()) it->second.last_seen_ns = clock_->NowNanos();
}

void BrokerCore::OnHeartbeat(const std::string& worker, const wire::HeartbeatMsg& msg) {
  auto it = workers_.find(worker);
  if (it == workers_.end()) return;
  it->second.last_seen_ns = clock_->NowNanos();
  if (!it->second.peer || msg.load < 0) return;
  it->second.load = msg.load;
  // Work waiting for credit may now go to this peer.
  for (const auto& [role, cap] : it->second.capacity)
    if (QueueDepth(role) > 0) ready_roles_.insert(role);
}

void BrokerCore::OnRegister(const std::string& id, const wire::RegisterMsg& msg,
                            std::vector<Outgoing>* out) {
  auto [it, fresh] = workers_.try_emplace(id);
  ++counters_.registrations;
  Worker& w = it->second;
  w.last_seen_ns = clock_->NowNanos();
  w.peer = msg.peer;
  w.load = msg.load;
  auto& lists = w.peer ? role_peers_ : role_workers_;
  // Roles no longer declared stop getting work.
  for (const auto& [role, cap] : w.capacity) {
    bool kept = false;
    for (const auto& r : msg.roles) kept |= r.first == role;
    if (kept) continue;
    auto& list = lists[role];
    list.erase(std::remove(list.begin(), list.end(), id), list.end());
  }
  // Held leases keep their slots: credit = capacity - leases held per role.
  std::map<std::string, uint32_t> held;
  for (uint64_t lease : w.leases) held[leases_[lease].role]++;
  w.capacity.clear();
  w.credit.clear();
  for (const auto& [role, cap] : msg.roles) {
    w.capacity[role] = cap;
    w.credit[role] = cap > held[role] ? cap - held[role] : 0;
    auto& list = lists[role];
    if (std::find(list.begin(), list.end(), id) == list.end()) list.push_back(id);
    if (!queues_[role].empty()) ready_roles_.insert(role);
  }
  if (fresh || !w.peer) {
    LOG_INFO << (w.peer ? "peer broker linked: " : fresh ? "worker registered: " : "worker re-registered: ")
             << msg.worker_id << (msg.node.empty() ? "" : " on " + msg.node) << " with " << msg.roles.size()
             << " roles";
  }
  out->push_back({id, wire::Control{config_.broker_id,
                                    wire::RegisterAckMsg{config_.broker_id, config_.heartbeat_ms}},
                  {}});
  w.last_sent_ns = clock_->NowNanos();
}

void BrokerCore::Enqueue(const std::string& role, Item item, bool front) {
  auto& q = queues_[role];
  if (front) {
    q.push_front(std::move(item));
  } else {
    q.push_back(std::move(item));
  }
  ready_roles_.insert(role);
}

void BrokerCore::OnSubmit(const std::string& worker, const wire::SubmitMsg& msg,
                          std::vector<std::string>&& payloads) {
  OnSeen(worker);
  auto wit = workers_.find(worker);
  size_t next_payload = 0;
  int64_t now_us = clock_->WallMicros();
  for (const auto& item : msg.items) {
    if (item.ack_lease != 0) {
      auto lit = leases_.find(item.ack_lease);
      if (lit == leases_.end() || lit->second.worker != worker) {
        ++counters_.stale_acks;
      } else {
        Lease lease = std::move(lit->second);
        leases_.erase(lit);
        if (wit != workers_.end()) {
          wit->second.leases.erase(item.ack_lease);
          wit->second.credit[lease.role]++;
          if (!queues_[lease.role].empty()) ready_roles_.insert(lease.role);
        }
        if (item.requeue) {
          ++counters_.requeued;
          Enqueue(lease.role, std::move(lease.item), /*front=*/true);
        } else {
          ++counters_.acked;
        }
      }
    }
    if (item.has_payload) {
      if (next_payload >= payloads.size()) {
        ++counters_.invalid;
        break;
      }
      std::string& payload = payloads[next_payload++];
      if (item.role.empty()) continue;
      counters_.bytes_in += static_cast<int64_t>(payload.size());
      ++counters_.submitted;
      Enqueue(item.role, Item{std::move(payload), item.task_id, 1, now_us, "", 0}, false);
    }
  }
}

void BrokerCore::ExpireWorker(const std::string& id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  LOG_WARN << "worker " << id << " missed its heartbeats; redelivering " << it->second.leases.size()
           << " leases";
  ++counters_.workers_expired;
  for (uint64_t lease_id : it->second.leases) {
    auto lit = leases_.find(lease_id);
    if (lit == leases_.end()) continue;
    Lease lease = std::move(lit->second);
    leases_.erase(lit);
    lease.item.deliveries++;
    ++counters_.redelivered;
    Enqueue(lease.role, std::move(lease.item), /*front=*/true);
  }
  for (const auto& [role, cap] : it->second.capacity) {
    auto& list = (it->second.peer ? role_peers_ : role_workers_)[role];
    list.erase(std::remove(list.begin(), list.end(), id), list.end());
  }
  workers_.erase(it);
  // Queues bound to this worker ("<role>@<worker>": steps that had to run
  // next to its tool-environment sessions) go to their role's shared queue,
  // whose workers end those tasks as lost with their sessions.
  const std::string suffix = "@" + id;
  std::vector<std::string> bound;
  for (const auto& [role, q] : queues_)
    if (role.size() > suffix.size() && role.compare(role.size() - suffix.size(), suffix.size(), suffix) == 0)
      bound.push_back(role);
  for (const auto& role : bound) MoveQueue(role, role.substr(0, role.size() - suffix.size()));
}

void BrokerCore::MoveQueue(const std::string& from, const std::string& to) {
  auto it = queues_.find(from);
  if (it == queues_.end()) return;
  std::deque<Item> items = std::move(it->second);
  queues_.erase(it);
  ready_roles_.erase(from);
  orphaned_since_.erase(from);
  if (!items.empty()) LOG_WARN << items.size() << " tasks queued for " << from << " go to " << to;
  for (auto& item : items) Enqueue(to, std::move(item), false);
}

void BrokerCore::MoveOrphanedQueues(int64_t now) {
  // A bound queue that no local worker and no peer serves (its worker died
  // before this broker knew it) is moved after two worker timeouts.
  const int64_t grace = 2 * static_cast<int64_t>(config_.worker_timeout_ms) * 1'000'000;
  std::vector<std::string> move;
  for (const auto& [role, q] : queues_) {
    size_t at = role.rfind('@');
    if (at == std::string::npos || at == 0 || q.empty()) continue;
    auto lw = role_workers_.find(role);
    auto lp = role_peers_.find(role);
    bool served = (lw != role_workers_.end() && !lw->second.empty()) || (lp != role_peers_.end() && !lp->second.empty());
    if (served) {
      orphaned_since_.erase(role);
      continue;
    }
    auto [it, fresh] = orphaned_since_.emplace(role, now);
    if (!fresh && now - it->second > grace) move.push_back(role);
  }
  for (const auto& role : move) MoveQueue(role, role.substr(0, role.rfind('@')));
}

void BrokerCore::OnPeerDeliver(const std::string& link, const wire::DeliverItem& item, std::string payload) {
  ++counters_.from_peers;
  counters_.peer_bytes_in += static_cast<int64_t>(payload.size());
  Enqueue(item.role, Item{std::move(payload), "", item.deliveries, item.enqueue_us, link, item.lease}, false);
}

std::vector<std::pair<std::string, uint64_t>> BrokerCore::TakeUpstreamAcks() {
  std::vector<std::pair<std::string, uint64_t>> acks;
  acks.swap(upstream_acks_);
  return acks;
}

std::vector<std::pair<std::string, uint32_t>> BrokerCore::PeerOffer(uint32_t window) const {
  std::vector<std::pair<std::string, uint32_t>> roles;
  for (const auto& [role, list] : role_workers_)
    if (!list.empty()) roles.emplace_back(role, window);
  std::sort(roles.begin(), roles.end());
  return roles;
}

void BrokerCore::Tick() {
  int64_t now = clock_->NowNanos();
  int64_t limit = static_cast<int64_t>(config_.worker_timeout_ms) * 1'000'000;
  std::vector<std::string> dead;
  for (const auto& [id, w] : workers_)
    if (now - w.last_seen_ns > limit) dead.push_back(id);
  for (const auto& id : dead) ExpireWorker(id);
  MoveOrphanedQueues(now);
  // Per locally served role: (queued + leased to local workers) / capacity.
  std::unordered_map<std::string, std::pair<int64_t, int64_t>> use;  // role -> (busy, capacity)
  for (const auto& [id, w] : workers_) {
    if (w.peer) continue;
    for (const auto& [role, cap] : w.capacity) {
      auto& u = use[role];
      u.second += cap;
      u.first += cap - w.credit.at(role);
    }
  }
  role_load_.clear();
  load_ = 0;
  for (const auto& [role, u] : use) {
    if (u.second <= 0) continue;
    const float l = static_cast<float>(u.first + static_cast<int64_t>(QueueDepth(role))) / static_cast<float>(u.second);
    role_load_[role] = l;
    load_ = std::max(load_, l);
    if (QueueDepth(role) > 0) ready_roles_.insert(role);  // may go to a peer now
  }
}

void BrokerCore::HandOut(const std::string& wid, Worker& w, const std::string& role, size_t n,
                         std::unordered_map<std::string, size_t>& slot, std::vector<Outgoing>* out) {
  auto& q = queues_[role];
  auto [sit, inserted] = slot.try_emplace(wid, out->size());
  if (inserted) out->push_back({wid, wire::Control{config_.broker_id, wire::DeliverMsg{}}, {}});
  Outgoing& o = (*out)[sit->second];
  auto& deliver = std::get<wire::DeliverMsg>(o.control.body);
  // The bundle grows once, not by doubling through a batch of ~2 KB payloads.
  size_t bytes = o.payloads.size();
  for (size_t i = 0; i < n; ++i) bytes += 4 + q[i].payload.size();
  o.payloads.reserve(bytes);
  deliver.items.reserve(deliver.items.size() + n);
  for (size_t i = 0; i < n; ++i) {
    Item item = std::move(q.front());
    q.pop_front();
    if (item.upstream_lease != 0) {
      upstream_acks_.emplace_back(item.upstream, item.upstream_lease);
      item.upstream_lease = 0;
    }
    uint64_t lease_id = next_lease_++;
    deliver.items.push_back({lease_id, role, item.deliveries, item.enqueue_us});
    counters_.bytes_out += static_cast<int64_t>(item.payload.size());
    wire::AppendPacked(item.payload, &o.payloads);
    w.leases.insert(lease_id);
    leases_.emplace(lease_id, Lease{wid, role, std::move(item)});
    ++counters_.delivered;
  }
  w.credit[role] -= static_cast<uint32_t>(n);
  w.last_sent_ns = clock_->NowNanos();
}

void BrokerCore::OfferToPeers(const std::string& role, std::unordered_map<std::string, size_t>& slot,
                              std::vector<Outgoing>* out) {
  auto pit = role_peers_.find(role);
  if (pit == role_peers_.end() || pit->second.empty()) return;
  auto& q = queues_[role];
  auto lit = role_workers_.find(role);
  const bool served_here = lit != role_workers_.end() && !lit->second.empty();
  while (!q.empty()) {
    const std::string* best_id = nullptr;
    Worker* best = nullptr;
    for (const auto& pid : pit->second) {
      Worker& p = workers_[pid];
      if (p.credit[role] == 0) continue;
      if (served_here && !(p.load + config_.steal_margin < role_load_[role])) continue;
      if (!best || p.load < best->load) {
        best = &p;
        best_id = &pid;
      }
    }
    if (!best) return;
    // A role served here moves only tasks that have not moved yet; counted
    // from the head, at most one batch, so a long queue is not scanned.
    const size_t limit = std::min<size_t>({best->credit[role], q.size(), config_.max_batch});
    size_t n = limit;
    if (served_here) {
      n = 0;
      while (n < limit && q[n].upstream.empty()) ++n;
    }
    if (n == 0) return;
    HandOut(*best_id, *best, role, n, slot, out);
    (served_here ? counters_.stolen : counters_.forwarded) += static_cast<int64_t>(n);
    // Count what was handed over until its next heartbeat says otherwise.
    if (served_here) best->load += static_cast<float>(n) / 256.0f;
  }
}

void BrokerCore::Dispatch(std::vector<Outgoing>* out) {
  std::unordered_map<std::string, size_t> slot;  // worker -> index in *out
  std::vector<std::string> roles(ready_roles_.begin(), ready_roles_.end());
  ready_roles_.clear();
  for (const auto& role : roles) {
    auto& q = queues_[role];
    auto& list = role_workers_[role];
    if (q.empty()) continue;
    size_t& rr = rr_[role];
    size_t idle_rounds = 0;
    // Round-robin over workers, one batch per worker per round, until the
    // queue is empty or nobody has credit. A batch is at most an even share
    // of what was queued: a burst (a partition's admissions) is spread over
    // the workers, where its tasks may stay for many steps (steps in place).
    const size_t share = list.empty() ? 0 : (q.size() + list.size() - 1) / list.size();
    while (!q.empty() && !list.empty() && idle_rounds < list.size()) {
      const std::string& wid = list[rr % list.size()];
      rr++;
      Worker& w = workers_[wid];
      uint32_t credit = w.credit[role];
      if (credit == 0) {
        ++idle_rounds;
        continue;
      }
      idle_rounds = 0;
      HandOut(wid, w, role, std::min<size_t>({credit, q.size(), config_.max_batch, share}), slot, out);
    }
    // The rest goes to peers or waits for credit (an ack re-marks the role
    // ready, and so does a peer's heartbeat while work waits).
    OfferToPeers(role, slot, out);
  }
}

std::vector<std::string> BrokerCore::WorkersNeedingHeartbeat() {
  std::vector<std::string> ids;
  int64_t now = clock_->NowNanos();
  int64_t interval = static_cast<int64_t>(config_.heartbeat_ms) * 1'000'000;
  for (const auto& [id, w] : workers_)
    if (now - w.last_sent_ns >= interval) ids.push_back(id);
  return ids;
}

void BrokerCore::MarkSent(const std::string& worker) {
  auto it = workers_.find(worker);
  if (it != workers_.end()) it->second.last_sent_ns = clock_->NowNanos();
}

size_t BrokerCore::QueueDepth(const std::string& role) const {
  auto it = queues_.find(role);
  return it == queues_.end() ? 0 : it->second.size();
}

std::vector<RoleState> BrokerCore::RoleStates() const {
  std::map<std::string, RoleState> roles;
  int64_t now_us = clock_->WallMicros();
  for (const auto& [role, q] : queues_) {
    RoleState& s = roles[role];
    s.depth = q.size();
    if (!q.empty()) s.oldest_age_s = std::max<int64_t>(0, now_us - q.front().enqueue_us) / 1e6;
  }
  // Roles whose workers all died stay listed, with no credit.
  for (const auto& [role, list] : role_workers_) roles[role];
  for (const auto& [id, w] : workers_)
    for (const auto& [role, c] : w.credit) roles[role].credit_free += c;
  std::vector<RoleState> out;
  out.reserve(roles.size());
  for (auto& [role, s] : roles) {
    s.role = role;
    out.push_back(std::move(s));
  }
  return out;
}

Json BrokerCore::Stats() const {
  Json queues = Json::object();
  int64_t now_us = clock_->WallMicros();
  for (const auto& [role, q] : queues_) {
    double oldest_s = q.empty() ? 0.0 : (now_us - q.front().enqueue_us) / 1e6;
    queues[role] = {{"depth", q.size()}, {"oldest_age_s", oldest_s}};
  }
  Json workers = Json::array();
  Json peers = Json::array();
  for (const auto& [id, w] : workers_) {
    if (w.peer) {
      peers.push_back({{"id", id}, {"load", w.load}, {"leases", w.leases.size()}});
      continue;
    }
    Json credit = Json::object();
    for (const auto& [role, c] : w.credit) credit[role] = c;
    workers.push_back({{"id", id}, {"credit", credit}, {"leases", w.leases.size()}});
  }
  return Json{{"broker_id", config_.broker_id},
              {"queues", queues},
              {"leases", leases_.size()},
              {"workers", workers},
              {"counters",
               {{"submitted", counters_.submitted},
                {"delivered", counters_.delivered},
                {"redelivered", counters_.redelivered},
                {"acked", counters_.acked},
                {"stale_acks", counters_.stale_acks},
                {"requeued", counters_.requeued},
                {"invalid", counters_.invalid},
                {"workers_expired", counters_.workers_expired},
                {"bytes_in", counters_.bytes_in},
                {"bytes_out", counters_.bytes_out},
                {"registrations", counters_.registrations},
                {"forwarded", counters_.forwarded},
                {"stolen", counters_.stolen},
                {"from_peers", counters_.from_peers}}},
              {"load", load_},
              {"peers", peers}};
}

}  // namespace matrix::broker
