// EndpointBalancer: least-outstanding choice under per-endpoint caps with
// round-robin ties, sticky rendezvous hashing and a per-endpoint circuit
// breaker.
// Thread-safety: single owner (see header).
#include "common/llm/endpoint_balancer.h"

#include <climits>

#include "common/base/hash.h"

namespace matrix::llm {

EndpointBalancer::EndpointBalancer(std::vector<std::string> keys, int cap_per_endpoint,
                                   BreakerOptions breaker)
    : breaker_(breaker) {
  if (breaker_.failure_threshold < 1) breaker_.failure_threshold = 1;
  eps_.resize(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    eps_[i].key = std::move(keys[i]);
    eps_[i].key_hash = Hash64(eps_[i].key);
    eps_[i].cap = cap_per_endpoint < 1 ? 1 : cap_per_endpoint;
  }
}

bool EndpointBalancer::Eligible(const State& s, int64_t now_ns) const {
  if (!s.open) return true;
  return now_ns >= s.open_until_ns && !s.probe_in_flight;
}

int EndpointBalancer::Pick(std::string_view sticky_key, int avoid, int64_t now_ns) {
  const int n = static_cast<int>(eps_.size());
  std::vector<char> candidate(n, 0);
  bool any_eligible = false;
  for (int i = 0; i < n; ++i) {
    if (Eligible(eps_[i], now_ns)) {
      candidate[i] = 1;
      any_eligible = true;
    }
  }
  const bool least_bad = !any_eligible;
  if (least_bad) candidate.assign(n, 1);

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
      if (!Eligible(eps_[i], now_ns)) continue;
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

bool EndpointBalancer::OnStart(int i, int64_t now_ns) {
  State& s = eps_[i];
  ++s.in_flight;
  if (s.open && now_ns >= s.open_until_ns && !s.probe_in_flight) {
    s.probe_in_flight = true;
    return true;
  }
  return false;
}

BreakerChange EndpointBalancer::OnFinish(int i, AttemptHealth health, bool was_probe,
                                         int64_t now_ns) {
  State& s = eps_[i];
  if (s.in_flight > 0) --s.in_flight;
  if (was_probe) s.probe_in_flight = false;
  switch (health) {
    case AttemptHealth::kNeutral:
      return BreakerChange::kNone;
    case AttemptHealth::kSuccess: {
      s.consecutive_failures = 0;
      if (!s.open) return BreakerChange::kNone;
      s.open = false;
      s.probe_in_flight = false;
      return BreakerChange::kClosed;
    }
    case AttemptHealth::kFailure: {
      ++s.consecutive_failures;
      if (s.open) {
        // Any failure while open (the probe's included) restarts the cool-down.
        s.open_until_ns = now_ns + breaker_.cooldown_ns;
        return BreakerChange::kNone;
      }
      if (s.consecutive_failures >= breaker_.failure_threshold) {
        s.open = true;
        s.open_until_ns = now_ns + breaker_.cooldown_ns;
        s.probe_in_flight = false;
        return BreakerChange::kOpened;
      }
      return BreakerChange::kNone;
    }
  }
  return BreakerChange::kNone;
}

int64_t EndpointBalancer::NextCooldownEnd(int64_t now_ns) const {
  int64_t next = INT64_MAX;
  for (const State& s : eps_) {
    if (s.open && s.open_until_ns > now_ns && s.open_until_ns < next) next = s.open_until_ns;
  }
  return next;
}

}  // namespace matrix::llm
