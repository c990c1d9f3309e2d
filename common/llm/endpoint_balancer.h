// EndpointBalancer: chooses the endpoint of one model pool for each request
// attempt and keeps each endpoint's circuit breaker.
//
// Choice, in order:
//   1. Eligible endpoints are the healthy ones: breaker closed, or cool-down
//      over and no probe in flight (half-open: exactly one probe goes through).
//      When none is eligible, every endpoint is, ranked least-bad first
//      (fewest consecutive failures), so requests are never failed outright.
//   2. Endpoints at their concurrency cap are skipped; when all eligible ones
//      are full, Pick returns -1 and the caller queues the request. Each
//      endpoint has its own cap, set with set_cap (the LLM client moves it
//      with the endpoint's adaptive concurrency limit); lowering it below the
//      attempts in flight lets those finish and starts no new one until the
//      endpoint is below its cap again.
//   3. A sticky key maps by rendezvous hashing to one eligible endpoint, which
//      is used while it has room (a key moves only when its endpoint is
//      unhealthy or full).
//   4. Otherwise least outstanding requests; ties go round-robin.
//   `avoid` (the endpoint of the previous attempt) is skipped whenever
//   another endpoint with room qualifies.
//
// Breaker: `failure_threshold` consecutive failures open it for `cooldown_ns`;
// then one probe is let through; a success closes it, a failure re-opens it
// for another cool-down. Outcomes that say nothing about the endpoint's health
// (429 rate limiting, cancellation) are reported as kNeutral.
//
// Thread-safety: none; owned by the LLM client's thread (or a test).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace matrix::llm {

struct BreakerOptions {
  int failure_threshold = 5;             // consecutive failures that open the breaker
  int64_t cooldown_ns = 10'000'000'000;  // time an open breaker skips the endpoint
};

enum class AttemptHealth { kSuccess, kFailure, kNeutral };

enum class BreakerChange { kNone, kOpened, kClosed };

class EndpointBalancer {
 public:
  // `keys` identify the endpoints for sticky hashing (their URLs); one entry per
  // endpoint, each starting with cap `cap_per_endpoint`.
  // REQUIRES: !keys.empty(), cap_per_endpoint >= 1.
  EndpointBalancer(std::vector<std::string> keys, int cap_per_endpoint, BreakerOptions breaker);

  size_t size() const { return eps_.size(); }

  // Index of the endpoint for the next attempt, or -1 when every candidate is
  // at its cap. `avoid` is -1 or an index to steer away from.
  int Pick(std::string_view sticky_key, int avoid, int64_t now_ns);

  // An attempt started on endpoint i. Returns true when it is the breaker's probe.
  bool OnStart(int i, int64_t now_ns);
  // The attempt finished; `was_probe` is OnStart's answer for it.
  BreakerChange OnFinish(int i, AttemptHealth health, bool was_probe, int64_t now_ns);

  int in_flight(int i) const { return eps_[i].in_flight; }
  // Attempts endpoint i may have in flight; values < 1 are stored as 1.
  int cap(int i) const { return eps_[i].cap; }
  void set_cap(int i, int cap) { eps_[i].cap = cap < 1 ? 1 : cap; }
  // Breaker closed. An open breaker whose cool-down has ended still reads
  // unhealthy until its probe succeeds.
  bool healthy(int i) const { return !eps_[i].open; }
  int consecutive_failures(int i) const { return eps_[i].consecutive_failures; }
  // Earliest end of a running cool-down, or INT64_MAX when none is running.
  int64_t NextCooldownEnd(int64_t now_ns) const;

 private:
  struct State {
    std::string key;
    uint64_t key_hash = 0;
    int in_flight = 0;
    int cap = 1;  // >= 1
    int consecutive_failures = 0;
    bool open = false;             // breaker tripped
    int64_t open_until_ns = 0;     // meaningful while open
    bool probe_in_flight = false;  // meaningful while open
  };
  bool Eligible(const State& s, int64_t now_ns) const;

  std::vector<State> eps_;
  BreakerOptions breaker_;
  size_t rr_next_ = 0;  // round-robin cursor for ties
};

}  // namespace matrix::llm
