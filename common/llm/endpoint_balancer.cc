// EndpointBalancer: least-outstanding choice under per-endpoint caps with
// round-robin ties, sticky rendezvous hashing, a per-endpoint circuit breaker
// closed by health probes, and endpoints that come and go.
// Thread-safety: single owner (see header).
#include "common/llm/endpoint_balancer.h"

#include <algorithm>
#include <climits>

#include "common/base/hash.h"

namespace matrix::llm {

EndpointBalancer::EndpointBalancer(int cap_per_endpoint, BreakerOptions breaker)
    : cap_per_endpoint_(cap_per_endpoint < 1 ? 1 : cap_per_endpoint), breaker_(breaker) {
  if (breaker_.failure_threshold < 1) breaker_.failure_threshold = 1;
  if (breaker_.cooldown_ns < 0) breaker_.cooldown_ns = 0;
  if (breaker_.min_probe_interval_ns < 0) breaker_.min_probe_interval_ns = 0;
}

EndpointBalancer::EndpointBalancer(std::vector<std::string> keys, int cap_per_endpoint,
                                   BreakerOptions breaker)
    : EndpointBalancer(cap_per_endpoint, breaker) {
  for (std::string& key : keys) Add(std::move(key), /*needs_probe=*/false, 0);
}

int EndpointBalancer::Add(std::string key, bool needs_probe, int64_t now_ns) {
  State s;
  s.key = std::move(key);
  s.key_hash = Hash64(s.key);
  s.cap = cap_per_endpoint_;
  s.admitted = !needs_probe;
  s.probe_due_ns = now_ns;
  eps_.push_back(std::move(s));
  return static_cast<int>(eps_.size()) - 1;
}

void EndpointBalancer::Retire(int i) { eps_[i].active = false; }

void EndpointBalancer::Reactivate(int i, bool needs_probe, int64_t now_ns) {
  State& s = eps_[i];
  if (s.active) return;
  s.active = true;
  if (needs_probe) s.admitted = false;
  if (!s.admitted) s.probe_due_ns = now_ns;
}

bool EndpointBalancer::HasServing() const {
  for (const State& s : eps_)
    if (Serving(s)) return true;
  return false;
}

int EndpointBalancer::Pick(std::string_view sticky_key, int avoid) {
  const int n = static_cast<int>(eps_.size());
  std::vector<char> candidate(n, 0);
  bool any_serving = false, any_eligible = false;
  for (int i = 0; i < n; ++i) {
    if (!Serving(eps_[i])) continue;
    any_serving = true;
    if (!eps_[i].open) {
      candidate[i] = 1;
      any_eligible = true;
    }
  }
  if (!any_serving) return -1;
  const bool least_bad = !any_eligible;
  if (least_bad) {
    for (int i = 0; i < n; ++i) candidate[i] = Serving(eps_[i]) ? 1 : 0;
  }

  int with_room = 0;
  for (int i = 0; i < n; ++i) {
    if (candidate[i] && eps_[i].in_flight >= eps_[i].cap) candidate[i] = 0;
    if (candidate[i]) ++with_room;
  }
  if (with_room == 0) return -1;
  if (avoid >= 0 && avoid < n && candidate[avoid] && with_room > 1) candidate[avoid] = 0;

  if (!sticky_key.empty() && !least_bad) {
    // Rendezvous hashing over the eligible endpoints (full ones included, so a
    // key keeps its home while that endpoint is merely busy).
    int home = -1;
    uint64_t best = 0;
    for (int i = 0; i < n; ++i) {
      if (!Serving(eps_[i]) || eps_[i].open) continue;
      uint64_t w = Hash64(sticky_key, eps_[i].key_hash);
      if (home < 0 || w > best) {
        home = i;
        best = w;
      }
    }
    if (home >= 0 && candidate[home]) return home;
  }

  // Least outstanding (least-bad mode: fewest consecutive failures first),
  // scanning from the round-robin cursor so ties rotate.
  int chosen = -1;
  for (int k = 0; k < n; ++k) {
    int i = static_cast<int>((rr_next_ + k) % n);
    if (!candidate[i]) continue;
    if (chosen < 0) {
      chosen = i;
      continue;
    }
    const State& a = eps_[i];
    const State& c = eps_[chosen];
    bool better =
        least_bad
            ? (a.consecutive_failures < c.consecutive_failures ||
               (a.consecutive_failures == c.consecutive_failures && a.in_flight < c.in_flight))
            : a.in_flight < c.in_flight;
    if (better) chosen = i;
  }
  rr_next_ = static_cast<size_t>(chosen + 1) % n;
  return chosen;
}

void EndpointBalancer::OnStart(int i) { ++eps_[i].in_flight; }

BreakerChange EndpointBalancer::OnFinish(int i, AttemptHealth health, int64_t now_ns) {
  State& s = eps_[i];
  if (s.in_flight > 0) --s.in_flight;
  switch (health) {
    case AttemptHealth::kNeutral:
      return BreakerChange::kNone;
    case AttemptHealth::kSuccess: {
      s.consecutive_failures = 0;
      if (!s.open) return BreakerChange::kNone;
      s.open = false;
      return s.admitted ? BreakerChange::kClosed : BreakerChange::kNone;
    }
    case AttemptHealth::kFailure: {
      ++s.consecutive_failures;
      // Probes that admit an endpoint keep their own schedule.
      if (s.open) {
        // Any failure while open restarts the cool-down.
        if (s.admitted) s.probe_due_ns = std::max(s.probe_due_ns, now_ns + breaker_.cooldown_ns);
        return BreakerChange::kNone;
      }
      if (s.consecutive_failures >= breaker_.failure_threshold) {
        s.open = true;
        if (s.admitted) s.probe_due_ns = now_ns + breaker_.cooldown_ns;
        return BreakerChange::kOpened;
      }
      return BreakerChange::kNone;
    }
  }
  return BreakerChange::kNone;
}

bool EndpointBalancer::ProbeDue(int i, int64_t now_ns) const {
  const State& s = eps_[i];
  return NeedsProbe(s) && now_ns >= s.probe_due_ns;
}

void EndpointBalancer::OnProbeStart(int i) { eps_[i].probe_in_flight = true; }

BreakerChange EndpointBalancer::OnProbeFinish(int i, bool ok, int64_t now_ns) {
  State& s = eps_[i];
  s.probe_in_flight = false;
  const bool out_of_service = s.open || !s.admitted;
  if (ok) {
    s.consecutive_failures = 0;
    s.open = false;
    s.admitted = true;
    return out_of_service ? BreakerChange::kClosed : BreakerChange::kNone;
  }
  // A failed probe of an endpoint that a user request has meanwhile put back
  // into service is stale news: user attempts decide from here.
  if (!out_of_service) return BreakerChange::kNone;
  if (s.open) ++s.consecutive_failures;
  s.probe_due_ns = now_ns + std::max(breaker_.cooldown_ns, breaker_.min_probe_interval_ns);
  return BreakerChange::kNone;
}

int64_t EndpointBalancer::NextProbeDue() const {
  int64_t next = INT64_MAX;
  for (const State& s : eps_)
    if (NeedsProbe(s)) next = std::min(next, s.probe_due_ns);
  return next;
}

}  // namespace matrix::llm
