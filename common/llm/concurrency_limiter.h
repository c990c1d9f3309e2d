// ConcurrencyLimiter: the adaptive (AIMD) concurrency limit of one endpoint.
//
// The limit starts at the ceiling (the pool's max_concurrency_per_endpoint)
// and moves with what the endpoint answers:
//   - overload (429, 503, an attempt that timed out): limit *= decrease,
//     never below 1, but only while overload answers are at least
//     `decrease_share` of the recent ones (a moving average over about
//     1 / share_weight attempts). An endpoint that is really over capacity
//     answers mostly 429/503; faults scattered among successes (a flaky
//     proxy, a few hung requests) say nothing about the load and must not
//     drive the limit down to a trickle;
//   - success: limit += increase / limit, never above the ceiling, so the
//     limit grows by about `increase` per `limit` successes (about one per
//     round trip while the endpoint is kept busy). Once overloads have
//     stopped (their share below `calm_share`) it grows by `increase` per
//     success instead, doubling per round trip, so the limit recovers in a
//     few round trips when the errors stop;
//   - latency signal (latency_target_ns > 0): while the moving average of
//     success latencies is above the target, a success does not grow the
//     limit and counts as a mild overload (limit *= latency_decrease).
// One overload episode fails every attempt in flight at about the same time,
// so decreases are rate-limited: a decrease needs
//   (a) the attempt to have started at or after the previous decrease (an
//       older one ran under the previous, larger limit and says nothing about
//       the current one), and
//   (b) one window to have passed since the previous decrease: the mean
//       success latency, or `initial_window_ns` before any was measured.
// The first decrease needs neither. Disabled, the limit stays at the ceiling
// (latencies are still averaged).
//
// Invariants: 1 <= limit() <= ceiling; cap() == floor(limit()).
// Thread-safety: none; owned by the LLM client's thread (or a test).
#pragma once

#include <cstdint>

namespace matrix::llm {

struct AimdOptions {
  bool enabled = true;
  int ceiling = 256;                          // starting and largest limit; values < 1 read as 1
  double decrease = 0.5;                      // factor on overload, in (0, 1)
  double increase = 1.0;                      // a success adds increase / limit (> 0)
  int64_t latency_target_ns = 0;              // 0: no latency signal
  double latency_decrease = 0.9;              // factor while mean latency is above target
  double latency_weight = 0.1;                // weight of the newest sample in the mean, (0, 1]
  int64_t initial_window_ns = 1'000'000'000;  // decrease window before any latency is known
  double decrease_share = 0.5;                // overload share needed for a decrease; 0: any overload
  double calm_share = 0.02;                   // below it, growth is fast; < 0: always additive
  double share_weight = 1.0 / 16;             // weight of the newest outcome in the share, (0, 1]
};

class ConcurrencyLimiter {
 public:
  explicit ConcurrencyLimiter(AimdOptions options);

  double limit() const { return limit_; }
  // Attempts the endpoint may have in flight now: floor(limit()), at least 1.
  int cap() const;
  // Moving average of success latencies; 0 until one was measured.
  int64_t mean_latency_ns() const { return mean_latency_ns_; }
  // The longest success latency of late: a maximum that fades by 1/2048 with
  // each success, so one slow answer is remembered for thousands of calls.
  int64_t slowest_latency_ns() const { return slowest_latency_ns_; }
  // Successful attempts seen so far.
  int64_t successes() const { return successes_; }
  // Moving share of overload answers among recent outcomes, in [0, 1].
  double overload_share() const { return overload_share_; }
  // Shortest time between two decreases.
  int64_t window_ns() const;

  // An attempt that started at start_ns succeeded at now_ns. Returns true
  // when the limit decreased (latency above target).
  bool OnSuccess(int64_t start_ns, int64_t now_ns);
  // An attempt that started at start_ns ended in an overload answer or a
  // timeout at now_ns. Returns true when the limit decreased.
  bool OnOverload(int64_t start_ns, int64_t now_ns);

 private:
  bool Decrease(double factor, int64_t start_ns, int64_t now_ns);

  AimdOptions options_;
  double limit_;
  int64_t mean_latency_ns_ = 0;
  int64_t slowest_latency_ns_ = 0;
  int64_t successes_ = 0;
  double overload_share_ = 0;
  bool decreased_ = false;        // a decrease has happened
  int64_t last_decrease_ns_ = 0;  // meaningful once decreased_
};

}  // namespace matrix::llm
