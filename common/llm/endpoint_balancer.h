// EndpointBalancer: chooses the endpoint of one model pool for each request
// attempt, keeps each endpoint's circuit breaker and decides when an endpoint
// is due for a health probe. Endpoints can be added, retired and brought back
// while requests are in flight; indices never change and an endpoint's state
// (in flight, failures, breaker) survives retirement.
//
// An endpoint serves user requests when it is
//   - active (not retired), and
//   - admitted: endpoints given to the constructor are admitted at once; one
//     added (or brought back) with `needs_probe` is admitted by its first
//     successful probe.
// Choice among the serving endpoints, in order:
//   1. Eligible endpoints are the healthy ones (breaker closed). An open
//      breaker takes no user requests at all, before or after its cool-down:
//      only a probe (see below) closes it. When no serving endpoint is
//      eligible, every serving endpoint is, ranked least-bad first (fewest
//      consecutive failures), so requests are not failed outright.
//   2. Endpoints at their concurrency cap are skipped; when all eligible ones
//      are full (or no endpoint serves), Pick returns -1 and the caller queues
//      the request. Each endpoint has its own cap, set with set_cap (the LLM
//      client moves it with the endpoint's adaptive concurrency limit);
//      lowering it below the attempts in flight lets those finish and starts
//      no new one until the endpoint is below its cap again.
//   3. A sticky key maps by rendezvous hashing over the eligible endpoints to
//      one of them, which is used while it has room (a key moves only when its
//      endpoint is unhealthy, full, retired or not yet admitted; adding or
//      retiring an endpoint moves only the keys that hash to it).
//   4. Otherwise least outstanding requests; ties go round-robin.
//   `avoid` (the endpoint of the previous attempt) is skipped whenever
//   another endpoint with room qualifies.
//
// Breaker: `failure_threshold` consecutive failed attempts open it; a probe is
// due `cooldown_ns` after the last failure. Probes are sent by the owner
// (ProbeDue / OnProbeStart / OnProbeFinish), never by routing a user request:
// a successful probe closes the breaker and admits the endpoint; a failed one
// schedules the next probe max(cooldown_ns, min_probe_interval_ns) later. A
// user attempt that succeeds on an open endpoint (least-bad routing) also
// closes its breaker; one that fails restarts the cool-down. An endpoint
// waiting for admission is due for a probe at once, then on the same schedule.
// At most one probe per endpoint is in flight; retired endpoints are not
// probed. Outcomes that say nothing about the endpoint's health (429 rate
// limiting, cancellation) are reported as kNeutral.
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
  int64_t cooldown_ns = 10'000'000'000;  // time from the last failure to the next probe
  // Floor of the time between a failed probe and the next one (so a zero
  // cool-down does not probe in a tight loop).
  int64_t min_probe_interval_ns = 100'000'000;
};

enum class AttemptHealth { kSuccess, kFailure, kNeutral };

// kClosed: the endpoint went back into service (breaker closed, or admitted).
enum class BreakerChange { kNone, kOpened, kClosed };

class EndpointBalancer {
 public:
  // No endpoints yet; each starts with cap `cap_per_endpoint` (values < 1 read as 1).
  EndpointBalancer(int cap_per_endpoint, BreakerOptions breaker);
  // `keys` identify the endpoints for sticky hashing (their URLs); one entry
  // per endpoint, all active and admitted.
  EndpointBalancer(std::vector<std::string> keys, int cap_per_endpoint, BreakerOptions breaker);

  size_t size() const { return eps_.size(); }

  // Adds an active endpoint and returns its index (size() - 1). With
  // `needs_probe` it serves only after a successful probe, due at now_ns.
  int Add(std::string key, bool needs_probe, int64_t now_ns);
  // Retired: no new attempts or probes; those in flight finish normally.
  void Retire(int i);
  // A retired endpoint becomes active again, keeping its state; with
  // `needs_probe` it is re-admitted by a successful probe, due at now_ns.
  void Reactivate(int i, bool needs_probe, int64_t now_ns);
  bool active(int i) const { return eps_[i].active; }
  bool admitted(int i) const { return eps_[i].admitted; }
  // Some active, admitted endpoint exists (requests can be routed, possibly
  // least-bad).
  bool HasServing() const;

  // Index of the endpoint for the next attempt, or -1 when every candidate is
  // at its cap or no endpoint serves. `avoid` is -1 or an index to steer away from.
  int Pick(std::string_view sticky_key, int avoid);

  // A user attempt started / finished on endpoint i.
  void OnStart(int i);
  BreakerChange OnFinish(int i, AttemptHealth health, int64_t now_ns);

  // Health probes of endpoint i: due (active, none in flight, breaker open or
  // not admitted, and its time has come)?
  bool ProbeDue(int i, int64_t now_ns) const;
  void OnProbeStart(int i);
  // kClosed when a successful probe put the endpoint back into service.
  BreakerChange OnProbeFinish(int i, bool ok, int64_t now_ns);
  // Earliest time a probe not yet in flight falls due (possibly <= now), or
  // INT64_MAX when none is pending.
  int64_t NextProbeDue() const;

  int in_flight(int i) const { return eps_[i].in_flight; }
  // Attempts endpoint i may have in flight; values < 1 are stored as 1.
  int cap(int i) const { return eps_[i].cap; }
  void set_cap(int i, int cap) { eps_[i].cap = cap < 1 ? 1 : cap; }
  // Admitted and breaker closed. An open breaker whose cool-down has ended
  // still reads unhealthy until a probe succeeds.
  bool healthy(int i) const { return eps_[i].admitted && !eps_[i].open; }
  bool breaker_open(int i) const { return eps_[i].open; }
  bool probe_in_flight(int i) const { return eps_[i].probe_in_flight; }
  int consecutive_failures(int i) const { return eps_[i].consecutive_failures; }

 private:
  struct State {
    std::string key;
    uint64_t key_hash = 0;
    int in_flight = 0;  // user attempts
    int cap = 1;        // >= 1
    int consecutive_failures = 0;
    bool active = true;
    bool admitted = true;
    bool open = false;         // breaker tripped
    int64_t probe_due_ns = 0;  // meaningful while open or not admitted
    bool probe_in_flight = false;
  };
  bool Serving(const State& s) const { return s.active && s.admitted; }
  bool NeedsProbe(const State& s) const {
    return s.active && !s.probe_in_flight && (s.open || !s.admitted);
  }

  std::vector<State> eps_;
  int cap_per_endpoint_;
  BreakerOptions breaker_;
  size_t rr_next_ = 0;  // round-robin cursor for ties
};

}  // namespace matrix::llm
