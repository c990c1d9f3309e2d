// Unit tests for the LLM client's pure logic: retry classification and
// backoff, Retry-After parsing, endpoint choice and circuit breaker, adaptive
// (AIMD) concurrency limits, response decoding, secret redaction, API-key
// loading and the scan of registered model endpoints.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <set>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "common/llm/api_key.h"
#include "common/llm/chat_response.h"
#include "common/llm/concurrency_limiter.h"
#include "common/llm/endpoint_balancer.h"
#include "common/llm/endpoint_directory.h"
#include "common/llm/retry_policy.h"
#include "test/support/test_util.h"

namespace matrix::llm {
namespace {

// --- Retry policy -----------------------------------------------------------

TEST(RetryPolicyTest, ClassifiesStatuses) {
  EXPECT_EQ(ClassifyHttpStatus(200), HttpOutcome::kSuccess);
  for (int s : {408, 429, 500, 502, 503, 504})
    EXPECT_EQ(ClassifyHttpStatus(s), HttpOutcome::kRetryable) << s;
  for (int s : {301, 400, 401, 403, 404, 413, 422})
    EXPECT_EQ(ClassifyHttpStatus(s), HttpOutcome::kNonRetryable) << s;
  EXPECT_TRUE(HonoursRetryAfter(429));
  EXPECT_TRUE(HonoursRetryAfter(503));
  EXPECT_FALSE(HonoursRetryAfter(500));
}

TEST(RetryPolicyTest, BackoffWindowDoublesUpToCap) {
  const double almost_one = 0.999999;
  EXPECT_NEAR(BackoffSeconds(1, 0.5, 30, almost_one), 0.5, 1e-4);
  EXPECT_NEAR(BackoffSeconds(2, 0.5, 30, almost_one), 1.0, 1e-4);
  EXPECT_NEAR(BackoffSeconds(3, 0.5, 30, almost_one), 2.0, 1e-4);
  EXPECT_NEAR(BackoffSeconds(7, 0.5, 30, almost_one), 30.0, 1e-3);
  EXPECT_NEAR(BackoffSeconds(5000, 0.5, 30, almost_one), 30.0, 1e-3);
  EXPECT_EQ(BackoffSeconds(3, 0.5, 30, 0.0), 0.0);
  EXPECT_NEAR(BackoffSeconds(3, 0.5, 30, 0.25), 0.5, 1e-9);  // full jitter: u * window
  EXPECT_EQ(BackoffSeconds(3, 0.0, 30, 0.5), 0.0);
}

TEST(RetryPolicyTest, BackoffIsSpreadAcrossTheWindow) {
  // Full jitter: draws cover [0, window) rather than clustering at the top.
  double lo = 1e9, hi = 0;
  for (int i = 0; i < 100; ++i) {
    double d = BackoffSeconds(4, 0.5, 30, i / 100.0);
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_LT(lo, 0.1);
  EXPECT_GT(hi, 3.8);
  EXPECT_LT(hi, 4.0);
}

TEST(RetryPolicyTest, RetryAfterTakesPrecedenceAndIsCapped) {
  EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 0.5, 30, 5.0, 0.9), 5.0);
  EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 0.5, 30, 1000.0, 0.9), 120.0);
  EXPECT_DOUBLE_EQ(RetryDelaySeconds(1, 0.5, 30, 0.0, 0.9), 0.0);
  EXPECT_NEAR(RetryDelaySeconds(2, 0.5, 30, std::nullopt, 0.5), 0.5, 1e-9);
}

TEST(RetryAfterTest, ParsesDeltaSeconds) {
  EXPECT_EQ(ParseRetryAfter("120", 0), 120.0);
  EXPECT_EQ(ParseRetryAfter("  3 ", 0), 3.0);
  EXPECT_EQ(ParseRetryAfter("0", 0), 0.0);
  EXPECT_EQ(ParseRetryAfter("1.5", 0), 1.5);
}

TEST(RetryAfterTest, ParsesHttpDates) {
  const double when = 1445412480;  // Wed, 21 Oct 2015 07:28:00 GMT
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", when - 10), 10.0);
  EXPECT_EQ(ParseRetryAfter("Wednesday, 21-Oct-15 07:28:00 GMT", when - 10), 10.0);
  EXPECT_EQ(ParseRetryAfter("Wed Oct 21 07:28:00 2015", when - 10), 10.0);
  // A date in the past means "now".
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", when + 100), 0.0);
}

TEST(RetryAfterTest, RejectsGarbage) {
  for (const char* v : {"", "   ", "soon", "-5", "1.2.3", ".", "12abc", "Thursday"})
    EXPECT_FALSE(ParseRetryAfter(v, 1e9).has_value()) << v;
}

// --- Endpoint balancer --------------------------------------------------------

EndpointBalancer MakeBalancer(int n, int cap, int threshold = 3, int64_t cooldown_ns = 1000) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back("http://10.0.0." + std::to_string(i) + ":8000/v1");
  BreakerOptions b;
  b.failure_threshold = threshold;
  b.cooldown_ns = cooldown_ns;
  b.min_probe_interval_ns = 0;
  return EndpointBalancer(keys, cap, b);
}

TEST(EndpointBalancerTest, PicksLeastOutstanding) {
  auto b = MakeBalancer(3, 10);
  b.OnStart(0);
  b.OnStart(0);
  b.OnStart(1);
  EXPECT_EQ(b.Pick("", -1), 2);
  b.OnStart(2);
  b.OnStart(2);
  EXPECT_EQ(b.Pick("", -1), 1);
}

TEST(EndpointBalancerTest, BreaksTiesRoundRobin) {
  auto b = MakeBalancer(3, 10);
  std::vector<int> picks;
  for (int i = 0; i < 6; ++i) picks.push_back(b.Pick("", -1));
  EXPECT_EQ(picks, (std::vector<int>{0, 1, 2, 0, 1, 2}));
}

TEST(EndpointBalancerTest, RespectsCapAndQueuesBeyondIt) {
  auto b = MakeBalancer(2, 2);
  for (int i = 0; i < 4; ++i) {
    int p = b.Pick("", -1);
    ASSERT_GE(p, 0);
    b.OnStart(p);
  }
  EXPECT_EQ(b.in_flight(0), 2);
  EXPECT_EQ(b.in_flight(1), 2);
  EXPECT_EQ(b.Pick("", -1), -1);
  b.OnFinish(1, AttemptHealth::kSuccess, 0);
  EXPECT_EQ(b.Pick("", -1), 1);
}

TEST(EndpointBalancerTest, AvoidsPreviousEndpointWhenAnotherHasRoom) {
  auto b = MakeBalancer(2, 2);
  b.OnStart(1);  // endpoint 1 is busier, yet 0 is to be avoided
  EXPECT_EQ(b.Pick("", 0), 1);
  b.OnStart(1);  // 1 is now full: 0 is the only choice left
  EXPECT_EQ(b.Pick("", 0), 0);
}

TEST(EndpointBalancerTest, StickyKeyKeepsItsEndpointUnderChangingLoad) {
  auto b = MakeBalancer(4, 100);
  int home = b.Pick("task-42", -1);
  for (int i = 0; i < 20; ++i) {
    b.OnStart(home);  // home grows busier than the others
    EXPECT_EQ(b.Pick("task-42", -1), home);
  }
}

TEST(EndpointBalancerTest, StickyKeysSpreadOverEndpoints) {
  auto b = MakeBalancer(4, 100);
  std::map<int, int> count;
  for (int k = 0; k < 400; ++k) count[b.Pick("task-" + std::to_string(k), -1)]++;
  ASSERT_EQ(count.size(), 4u);
  for (auto& [ep, n] : count) EXPECT_GT(n, 50) << "endpoint " << ep;
}

TEST(EndpointBalancerTest, StickyKeyMovesOnlyWhileHomeIsUnhealthy) {
  auto b = MakeBalancer(3, 100, /*threshold=*/2, /*cooldown_ns=*/1000);
  int home = b.Pick("conv", -1);
  for (int i = 0; i < 2; ++i) {
    b.OnStart(home);
    b.OnFinish(home, AttemptHealth::kFailure, 0);
  }
  ASSERT_FALSE(b.healthy(home));
  int moved = b.Pick("conv", -1);
  EXPECT_NE(moved, home);
  EXPECT_EQ(b.Pick("conv", -1), moved);  // stable while home is out
  // Cool-down over: the probe succeeds and the key goes home.
  ASSERT_TRUE(b.ProbeDue(home, 1000));
  b.OnProbeStart(home);
  EXPECT_EQ(b.OnProbeFinish(home, true, 1000), BreakerChange::kClosed);
  EXPECT_EQ(b.Pick("conv", -1), home);
}

TEST(EndpointBalancerTest, BreakerOpensAfterConsecutiveFailures) {
  auto b = MakeBalancer(2, 10, /*threshold=*/3, /*cooldown_ns=*/1000);
  b.OnStart(0);
  b.OnFinish(0, AttemptHealth::kFailure, 0);
  b.OnStart(0);
  b.OnFinish(0, AttemptHealth::kSuccess, 0);  // resets the streak
  for (int i = 0; i < 2; ++i) {
    b.OnStart(0);
    EXPECT_EQ(b.OnFinish(0, AttemptHealth::kFailure, 0), BreakerChange::kNone);
  }
  EXPECT_TRUE(b.healthy(0));
  EXPECT_EQ(b.NextProbeDue(), INT64_MAX);
  b.OnStart(0);
  EXPECT_EQ(b.OnFinish(0, AttemptHealth::kFailure, 100), BreakerChange::kOpened);
  EXPECT_FALSE(b.healthy(0));
  EXPECT_EQ(b.NextProbeDue(), 1100);
  // During the cool-down every pick goes to endpoint 1, however loaded.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(b.Pick("", -1), 1);
    b.OnStart(1);
  }
}

TEST(EndpointBalancerTest, OpenBreakerTakesNoUserRequestsUntilAProbeSucceeds) {
  auto b = MakeBalancer(2, 10, /*threshold=*/1, /*cooldown_ns=*/1000);
  b.OnStart(0);
  b.OnFinish(0, AttemptHealth::kFailure, 0);
  ASSERT_FALSE(b.healthy(0));
  b.OnStart(1);  // endpoint 1 busier: an eligible 0 would win least-outstanding
  b.OnStart(1);
  EXPECT_FALSE(b.ProbeDue(0, 999));
  EXPECT_FALSE(b.ProbeDue(1, 5000));  // a healthy endpoint is never probed
  // Cool-down over: still no user request goes to 0; a probe is due instead.
  EXPECT_EQ(b.Pick("", -1), 1);
  ASSERT_TRUE(b.ProbeDue(0, 1000));
  b.OnProbeStart(0);
  EXPECT_FALSE(b.ProbeDue(0, 1001));  // one probe at a time
  EXPECT_EQ(b.NextProbeDue(), INT64_MAX);
  EXPECT_EQ(b.Pick("", -1), 1);
  EXPECT_EQ(b.in_flight(0), 0);  // probes are not user attempts
  // The probe fails: the next one is due a cool-down later.
  EXPECT_EQ(b.OnProbeFinish(0, false, 1500), BreakerChange::kNone);
  EXPECT_FALSE(b.healthy(0));
  EXPECT_EQ(b.NextProbeDue(), 2500);
  EXPECT_FALSE(b.ProbeDue(0, 2499));
  ASSERT_TRUE(b.ProbeDue(0, 2500));
  b.OnProbeStart(0);
  EXPECT_EQ(b.OnProbeFinish(0, true, 2600), BreakerChange::kClosed);
  EXPECT_TRUE(b.healthy(0));
  EXPECT_EQ(b.consecutive_failures(0), 0);
  EXPECT_EQ(b.Pick("", -1), 0);
}

TEST(EndpointBalancerTest, FailedProbesAreSpacedAtLeastTheMinimumInterval) {
  BreakerOptions o;
  o.failure_threshold = 1;
  o.cooldown_ns = 0;
  o.min_probe_interval_ns = 100;
  EndpointBalancer b({"a", "b"}, 4, o);
  b.OnStart(0);
  b.OnFinish(0, AttemptHealth::kFailure, 10);
  ASSERT_TRUE(b.ProbeDue(0, 10));  // zero cool-down: the first probe at once
  b.OnProbeStart(0);
  b.OnProbeFinish(0, false, 20);
  EXPECT_EQ(b.NextProbeDue(), 120);
}

TEST(EndpointBalancerTest, AllUnhealthyStillPicksLeastBad) {
  auto b = MakeBalancer(3, 10, /*threshold=*/2, /*cooldown_ns=*/1'000'000);
  auto fail = [&](int ep, int times) {
    for (int i = 0; i < times; ++i) {
      b.OnStart(ep);
      b.OnFinish(ep, AttemptHealth::kFailure, 0);
    }
  };
  fail(0, 5);
  fail(1, 2);
  fail(2, 4);
  for (int i = 0; i < 3; ++i) ASSERT_FALSE(b.healthy(i));
  EXPECT_EQ(b.Pick("", -1), 1);
  EXPECT_EQ(b.Pick("sticky", -1), 1);
}

TEST(EndpointBalancerTest, NeutralOutcomesDoNotTrip) {
  auto b = MakeBalancer(1, 10, /*threshold=*/2);
  for (int i = 0; i < 10; ++i) {
    b.OnStart(0);
    b.OnFinish(0, AttemptHealth::kNeutral, 0);
  }
  EXPECT_TRUE(b.healthy(0));
  EXPECT_EQ(b.in_flight(0), 0);
}

TEST(EndpointBalancerTest, PerEndpointCapsFollowSetCap) {
  auto b = MakeBalancer(2, 4);
  for (int k = 0; k < 3; ++k) {
    b.OnStart(0);
    b.OnStart(1);
  }
  EXPECT_EQ(b.cap(0), 4);
  b.set_cap(0, 2);  // below the 3 in flight: they finish, no new one starts
  EXPECT_EQ(b.Pick("", -1), 1);
  b.OnStart(1);
  EXPECT_EQ(b.Pick("", -1), -1);  // endpoint 1 full, endpoint 0 above its cap
  b.OnFinish(0, AttemptHealth::kSuccess, 0);
  EXPECT_EQ(b.Pick("", -1), -1);  // 2 in flight, cap 2
  b.OnFinish(0, AttemptHealth::kSuccess, 0);
  EXPECT_EQ(b.Pick("", -1), 0);
  b.set_cap(1, 0);
  EXPECT_EQ(b.cap(1), 1);
}

TEST(EndpointBalancerTest, StartsEmptyAndServesNothingUntilAnEndpointIsAdmitted) {
  EndpointBalancer b(4, BreakerOptions{});
  EXPECT_EQ(b.size(), 0u);
  EXPECT_FALSE(b.HasServing());
  EXPECT_EQ(b.Pick("", -1), -1);
  EXPECT_EQ(b.Pick("key", -1), -1);
  EXPECT_EQ(b.NextProbeDue(), INT64_MAX);
  // Added with a probe: due at once, no traffic until it succeeds.
  EXPECT_EQ(b.Add("http://10.0.0.1:8000/v1", /*needs_probe=*/true, 500), 0);
  EXPECT_FALSE(b.HasServing());
  EXPECT_FALSE(b.healthy(0));
  EXPECT_EQ(b.Pick("", -1), -1);
  EXPECT_EQ(b.NextProbeDue(), 500);
  ASSERT_TRUE(b.ProbeDue(0, 500));
  b.OnProbeStart(0);
  EXPECT_EQ(b.OnProbeFinish(0, false, 600), BreakerChange::kNone);
  EXPECT_EQ(b.Pick("", -1), -1);
  EXPECT_EQ(b.NextProbeDue(), 600 + BreakerOptions{}.cooldown_ns);
  b.OnProbeStart(0);
  EXPECT_EQ(b.OnProbeFinish(0, true, 700), BreakerChange::kClosed);
  EXPECT_TRUE(b.HasServing());
  EXPECT_TRUE(b.healthy(0));
  EXPECT_EQ(b.Pick("", -1), 0);
  // Added without a probe: serves at once.
  EXPECT_EQ(b.Add("http://10.0.0.2:8000/v1", /*needs_probe=*/false, 800), 1);
  b.OnStart(0);
  EXPECT_EQ(b.Pick("", -1), 1);
}

TEST(EndpointBalancerTest, RetiredEndpointTakesNothingNewAndComesBackWithItsState) {
  auto b = MakeBalancer(3, 10);
  b.OnStart(2);
  b.OnStart(2);
  b.Retire(2);
  EXPECT_FALSE(b.active(2));
  for (int i = 0; i < 20; ++i) {
    int p = b.Pick("", -1);
    ASSERT_NE(p, 2);
    ASSERT_GE(p, 0);
  }
  // Attempts in flight there finish normally.
  EXPECT_EQ(b.in_flight(2), 2);
  b.OnFinish(2, AttemptHealth::kSuccess, 0);
  b.OnFinish(2, AttemptHealth::kFailure, 0);
  EXPECT_EQ(b.in_flight(2), 0);
  EXPECT_EQ(b.consecutive_failures(2), 1);
  // Back without a probe: keeps its failure count, serves at once.
  b.Reactivate(2, /*needs_probe=*/false, 10);
  EXPECT_TRUE(b.active(2));
  EXPECT_EQ(b.consecutive_failures(2), 1);
  std::set<int> seen;
  for (int i = 0; i < 6; ++i) seen.insert(b.Pick("", -1));
  EXPECT_EQ(seen.count(2), 1u);
  // Retired again and back with a probe: no traffic until it succeeds.
  b.Retire(2);
  b.Reactivate(2, /*needs_probe=*/true, 20);
  EXPECT_FALSE(b.healthy(2));
  for (int i = 0; i < 6; ++i) EXPECT_NE(b.Pick("", -1), 2);
  ASSERT_TRUE(b.ProbeDue(2, 20));
  b.OnProbeStart(2);
  EXPECT_EQ(b.OnProbeFinish(2, true, 30), BreakerChange::kClosed);
  seen.clear();
  for (int i = 0; i < 6; ++i) seen.insert(b.Pick("", -1));
  EXPECT_EQ(seen.count(2), 1u);
}

TEST(EndpointBalancerTest, RetiredEndpointsAreNotProbed) {
  auto b = MakeBalancer(2, 10, /*threshold=*/1, /*cooldown_ns=*/100);
  b.OnStart(0);
  b.OnFinish(0, AttemptHealth::kFailure, 0);
  ASSERT_TRUE(b.ProbeDue(0, 100));
  b.Retire(0);
  EXPECT_FALSE(b.ProbeDue(0, 100));
  EXPECT_EQ(b.NextProbeDue(), INT64_MAX);
}

TEST(EndpointBalancerTest, RetiringMovesOnlyTheRetiredEndpointsStickyKeys) {
  auto b = MakeBalancer(4, 1000);
  std::map<std::string, int> home;
  for (int k = 0; k < 200; ++k) {
    std::string key = "task-" + std::to_string(k);
    home[key] = b.Pick(key, -1);
  }
  b.Retire(3);
  int moved = 0;
  for (const auto& [key, ep] : home) {
    int now = b.Pick(key, -1);
    ASSERT_NE(now, 3);
    if (ep == 3) {
      ++moved;
    } else {
      EXPECT_EQ(now, ep) << key;
    }
  }
  EXPECT_GT(moved, 20);
  // A new endpoint takes a share of the keys once admitted; the rest stay put.
  int e = b.Add("http://10.0.0.9:8000/v1", /*needs_probe=*/true, 0);
  for (const auto& [key, ep] : home) {
    if (ep != 3) {
      EXPECT_EQ(b.Pick(key, -1), ep) << key;
    }
  }
  b.OnProbeStart(e);
  b.OnProbeFinish(e, true, 0);
  int to_new = 0;
  for (const auto& [key, ep] : home) {
    int now = b.Pick(key, -1);
    if (now == e) {
      ++to_new;
    } else if (ep != 3) {
      EXPECT_EQ(now, ep) << key;
    }
  }
  EXPECT_GT(to_new, 20);
}

TEST(EndpointBalancerTest, AllRetiredPicksNothing) {
  auto b = MakeBalancer(2, 10);
  b.Retire(0);
  b.Retire(1);
  EXPECT_FALSE(b.HasServing());
  EXPECT_EQ(b.Pick("", -1), -1);
  EXPECT_EQ(b.Pick("k", -1), -1);
}

// --- Adaptive concurrency (AIMD) ------------------------------------------------

// The windowing mechanics on their own: every overload counts and growth is
// always additive. (The share rule and fast recovery have tests of their own.)
AimdOptions Aimd(int ceiling) {
  AimdOptions o;
  o.ceiling = ceiling;
  o.decrease_share = 0;
  o.calm_share = -1;
  return o;
}

// One attempt on `limiter` that starts now, takes `ms` on `clock` and succeeds.
bool SucceedAfter(ConcurrencyLimiter& limiter, FakeClock& clock, int64_t ms) {
  const int64_t start = clock.NowNanos();
  clock.AdvanceMillis(ms);
  return limiter.OnSuccess(start, clock.NowNanos());
}

TEST(ConcurrencyLimiterTest, ScatteredFaultsAmongSuccessesDoNotShrinkTheLimit) {
  FakeClock clock;
  AimdOptions o;
  o.ceiling = 64;
  ConcurrencyLimiter limiter(o);
  // One answer in three is a 429 or a timeout, the rest succeed: a flaky
  // endpoint, not an overloaded one.
  for (int i = 0; i < 3000; ++i) {
    const int64_t start = clock.NowNanos();
    clock.AdvanceMillis(10);
    if (i % 3 == 0) {
      EXPECT_FALSE(limiter.OnOverload(start, clock.NowNanos())) << i;
    } else {
      limiter.OnSuccess(start, clock.NowNanos());
    }
  }
  EXPECT_EQ(limiter.limit(), 64);
  EXPECT_NEAR(limiter.overload_share(), 0.33, 0.1);
}

TEST(ConcurrencyLimiterTest, MostlyOverloadAnswersShrinkTheLimitAndItRecoversFastWhenTheyStop) {
  FakeClock clock;
  AimdOptions o;
  o.ceiling = 256;
  o.initial_window_ns = 0;
  ConcurrencyLimiter limiter(o);
  // An endpoint over capacity: nine answers in ten are 429.
  for (int i = 0; i < 400; ++i) {
    const int64_t start = clock.NowNanos();
    clock.AdvanceMillis(10);
    if (i % 10 == 9) {
      limiter.OnSuccess(start, clock.NowNanos());
    } else {
      limiter.OnOverload(start, clock.NowNanos());
    }
  }
  EXPECT_LE(limiter.limit(), 4);
  // The overload is over: within a few hundred successes (a few round trips
  // at these limits), the limit is back at the ceiling, not after 250 round trips.
  int successes = 0;
  while (limiter.limit() < 256 && successes < 5000) {
    SucceedAfter(limiter, clock, 10);
    ++successes;
  }
  EXPECT_EQ(limiter.limit(), 256);
  EXPECT_LT(successes, 400);
}

TEST(ConcurrencyLimiterTest, StartsAtTheCeiling) {
  ConcurrencyLimiter limiter(Aimd(64));
  EXPECT_EQ(limiter.limit(), 64);
  EXPECT_EQ(limiter.cap(), 64);
  EXPECT_EQ(limiter.mean_latency_ns(), 0);
  EXPECT_EQ(limiter.window_ns(), 1'000'000'000);
  EXPECT_EQ(ConcurrencyLimiter(Aimd(0)).cap(), 1);
}

TEST(ConcurrencyLimiterTest, AnOverloadBurstHalvesOncePerWindow) {
  FakeClock clock;
  ConcurrencyLimiter limiter(Aimd(64));
  SucceedAfter(limiter, clock, 100);  // mean latency, and so the window: 100 ms
  EXPECT_EQ(limiter.limit(), 64);     // already at the ceiling
  EXPECT_EQ(limiter.window_ns(), 100'000'000);

  // Twenty attempts in flight together all come back 429: one halving.
  const int64_t burst_start = clock.NowNanos();
  clock.AdvanceMillis(5);
  EXPECT_TRUE(limiter.OnOverload(burst_start, clock.NowNanos()));
  for (int i = 0; i < 19; ++i) EXPECT_FALSE(limiter.OnOverload(burst_start, clock.NowNanos()));
  EXPECT_EQ(limiter.limit(), 32);
  const int64_t first_decrease = clock.NowNanos();

  // A straggler of the same burst, a window later: it ran under the old limit.
  clock.AdvanceMillis(150);
  EXPECT_FALSE(limiter.OnOverload(burst_start, clock.NowNanos()));
  EXPECT_EQ(limiter.limit(), 32);

  // An attempt sent under the new limit, a window after the decrease: halves.
  EXPECT_TRUE(limiter.OnOverload(first_decrease, clock.NowNanos()));
  EXPECT_EQ(limiter.limit(), 16);

  // Sent at the decrease but back within the window: ignored; after it: halves.
  const int64_t second_decrease = clock.NowNanos();
  clock.AdvanceMillis(50);
  EXPECT_FALSE(limiter.OnOverload(second_decrease, clock.NowNanos()));
  EXPECT_EQ(limiter.limit(), 16);
  clock.AdvanceMillis(50);
  EXPECT_TRUE(limiter.OnOverload(second_decrease, clock.NowNanos()));
  EXPECT_EQ(limiter.limit(), 8);
}

TEST(ConcurrencyLimiterTest, WindowIsOneSecondUntilALatencyIsMeasured) {
  FakeClock clock;
  ConcurrencyLimiter limiter(Aimd(40));
  const int64_t t0 = clock.NowNanos();
  EXPECT_TRUE(limiter.OnOverload(t0, t0));
  EXPECT_EQ(limiter.limit(), 20);
  clock.AdvanceMillis(999);
  EXPECT_FALSE(limiter.OnOverload(t0, clock.NowNanos()));
  clock.AdvanceMillis(1);
  EXPECT_TRUE(limiter.OnOverload(t0, clock.NowNanos()));
  EXPECT_EQ(limiter.limit(), 10);
}

TEST(ConcurrencyLimiterTest, DecreaseFloorsAtOne) {
  FakeClock clock;
  AimdOptions o = Aimd(5);
  o.initial_window_ns = 0;
  ConcurrencyLimiter limiter(o);
  std::vector<int> caps;
  for (int i = 0; i < 5; ++i) {
    clock.AdvanceMillis(10);
    limiter.OnOverload(clock.NowNanos(), clock.NowNanos());
    caps.push_back(limiter.cap());
  }
  EXPECT_EQ(caps, (std::vector<int>{2, 1, 1, 1, 1}));  // 2.5, 1.25, 1, 1, 1
  EXPECT_EQ(limiter.limit(), 1);
}

TEST(ConcurrencyLimiterTest, DecreaseFactorIsConfigurable) {
  FakeClock clock;
  AimdOptions o = Aimd(100);
  o.decrease = 0.8;
  ConcurrencyLimiter limiter(o);
  EXPECT_TRUE(limiter.OnOverload(clock.NowNanos(), clock.NowNanos()));
  EXPECT_DOUBLE_EQ(limiter.limit(), 80);
}

TEST(ConcurrencyLimiterTest, GrowsByAboutOnePerLimitSuccessesUpToTheCeiling) {
  FakeClock clock;
  ConcurrencyLimiter limiter(Aimd(16));
  limiter.OnOverload(clock.NowNanos(), clock.NowNanos());
  ASSERT_EQ(limiter.limit(), 8);
  for (int i = 0; i < 8; ++i) EXPECT_FALSE(SucceedAfter(limiter, clock, 10));
  EXPECT_GT(limiter.limit(), 8.9);  // 8 + 1/8 + 1/8.125 + ...
  EXPECT_LT(limiter.limit(), 9.0);
  EXPECT_EQ(limiter.cap(), 8);

  int successes = 8;
  while (limiter.limit() < 16 && successes < 1000) {
    SucceedAfter(limiter, clock, 10);
    ++successes;
  }
  // About 8 + 9 + ... + 15 successes from 8 back to 16.
  EXPECT_GE(successes, 88);
  EXPECT_LE(successes, 100);
  for (int i = 0; i < 50; ++i) SucceedAfter(limiter, clock, 10);
  EXPECT_EQ(limiter.limit(), 16);
  EXPECT_EQ(limiter.cap(), 16);
}

TEST(ConcurrencyLimiterTest, MeanLatencyIsAMovingAverage) {
  FakeClock clock;
  ConcurrencyLimiter limiter(Aimd(8));
  SucceedAfter(limiter, clock, 200);
  EXPECT_EQ(limiter.mean_latency_ns(), 200'000'000);
  SucceedAfter(limiter, clock, 400);
  EXPECT_EQ(limiter.mean_latency_ns(), 220'000'000);  // 0.1 * 400 + 0.9 * 200
  EXPECT_EQ(limiter.window_ns(), 220'000'000);
}

// The longest answer is remembered long after the mean forgot it, so that an
// attempt's patience covers the long end of a long-tailed length distribution.
TEST(ConcurrencyLimiterTest, TheSlowestLatencyFadesSlowly) {
  FakeClock clock;
  ConcurrencyLimiter limiter(Aimd(8));
  EXPECT_EQ(limiter.slowest_latency_ns(), 0);
  SucceedAfter(limiter, clock, 4000);
  for (int i = 0; i < 100; ++i) SucceedAfter(limiter, clock, 100);
  EXPECT_LT(limiter.mean_latency_ns(), 200'000'000);
  EXPECT_GT(limiter.slowest_latency_ns(), 3'800'000'000);  // 4 s * (1 - 1/2048)^100
  EXPECT_LT(limiter.slowest_latency_ns(), 4'000'000'000);
  for (int i = 0; i < 20000; ++i) SucceedAfter(limiter, clock, 100);
  EXPECT_EQ(limiter.slowest_latency_ns(), 100'000'000);  // faded down to what answers take now
  SucceedAfter(limiter, clock, 600);
  EXPECT_EQ(limiter.slowest_latency_ns(), 600'000'000);
}

TEST(ConcurrencyLimiterTest, LatencyAboveTargetStopsGrowthAndShrinksGently) {
  FakeClock clock;
  AimdOptions o = Aimd(32);
  o.latency_target_ns = 100'000'000;
  ConcurrencyLimiter limiter(o);
  limiter.OnOverload(clock.NowNanos(), clock.NowNanos());
  ASSERT_EQ(limiter.limit(), 16);

  for (int i = 0; i < 16; ++i) EXPECT_FALSE(SucceedAfter(limiter, clock, 50));
  const double grown = limiter.limit();
  EXPECT_GT(grown, 16.9);  // under the target: additive increase

  // Slow answers lift the mean above 100 ms from the second one on (95, 135.5
  // ms, ...); from then each success, one window after the last, takes 10 %.
  EXPECT_FALSE(SucceedAfter(limiter, clock, 500));
  const double before_slow = limiter.limit();
  EXPECT_GT(before_slow, grown);
  EXPECT_TRUE(SucceedAfter(limiter, clock, 500));
  EXPECT_DOUBLE_EQ(limiter.limit(), before_slow * 0.9);
  EXPECT_TRUE(SucceedAfter(limiter, clock, 500));
  EXPECT_DOUBLE_EQ(limiter.limit(), before_slow * 0.81);

  // Fast answers bring the mean back under the target and growth resumes.
  const double low = limiter.limit();
  bool grew = false;
  for (int i = 0; i < 100 && !grew; ++i) {
    SucceedAfter(limiter, clock, 10);
    grew = limiter.limit() > low;
  }
  EXPECT_TRUE(grew);
  EXPECT_LT(limiter.mean_latency_ns(), 100'000'000);
}

TEST(ConcurrencyLimiterTest, NoLatencyTargetMeansSlowAnswersStillGrowTheLimit) {
  FakeClock clock;
  ConcurrencyLimiter limiter(Aimd(32));
  limiter.OnOverload(clock.NowNanos(), clock.NowNanos());
  for (int i = 0; i < 16; ++i) EXPECT_FALSE(SucceedAfter(limiter, clock, 5000));
  EXPECT_GT(limiter.limit(), 16.9);
}

TEST(ConcurrencyLimiterTest, DisabledStaysAtTheCeiling) {
  FakeClock clock;
  AimdOptions o = Aimd(12);
  o.enabled = false;
  o.latency_target_ns = 1;
  ConcurrencyLimiter limiter(o);
  for (int i = 0; i < 10; ++i) {
    clock.AdvanceMillis(2000);
    EXPECT_FALSE(limiter.OnOverload(clock.NowNanos(), clock.NowNanos()));
    EXPECT_FALSE(SucceedAfter(limiter, clock, 100));
  }
  EXPECT_EQ(limiter.limit(), 12);
  EXPECT_EQ(limiter.mean_latency_ns(), 100'000'000);
}

// --- Response decoding ------------------------------------------------------

TEST(ChatResponseTest, ParsesFirstChoiceUsageAndKeepsExtras) {
  std::string body = R"({"id":"c1","model":"m","prompt_token_ids":[1,2],
    "choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},
                "finish_reason":"length","logprobs":{"content":[{"token":"Hello","logprob":-0.1}]}},
               {"index":1,"message":{"role":"assistant","content":"Other"},"finish_reason":"stop"}],
    "usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}})";
  auto p = ParseChatCompletion(body);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->content, "Hello");
  EXPECT_EQ(p->finish_reason, "length");
  EXPECT_EQ(p->prompt_tokens, 12);
  EXPECT_EQ(p->completion_tokens, 5);
  EXPECT_TRUE(p->tool_calls.is_null());
  ASSERT_EQ(p->raw["choices"].size(), 1u);
  EXPECT_EQ(p->raw["choices"][0]["logprobs"]["content"][0]["token"], "Hello");
  EXPECT_EQ(p->raw["usage"]["total_tokens"], 17);
  EXPECT_EQ(p->raw["prompt_token_ids"], Json::array({1, 2}));
}

TEST(ChatResponseTest, ParsesToolCallsWithNullContent) {
  std::string body = R"({"choices":[{"message":{"role":"assistant","content":null,
    "tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"id\":3}"}}]},
    "finish_reason":"tool_calls"}]})";
  auto p = ParseChatCompletion(body);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->content, "");
  ASSERT_TRUE(p->tool_calls.is_array());
  EXPECT_EQ(p->tool_calls[0]["function"]["name"], "lookup");
  EXPECT_EQ(p->finish_reason, "tool_calls");
  EXPECT_EQ(p->prompt_tokens, 0);
}

TEST(ChatResponseTest, JoinsContentParts) {
  auto p = ParseChatCompletion(
      R"({"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]})");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->content, "ab");
}

TEST(ChatResponseTest, RejectsMalformedBodies) {
  for (const char* body : {"", "not json", "[1,2]", R"({"object":"error"})", R"({"choices":[]})",
                           R"({"choices":"x"})", R"({"choices":[{"text":"legacy"}]})",
                           R"({"choices":[3]})", "{\"choices\": [{\"message\": {"}) {
    auto p = ParseChatCompletion(body);
    EXPECT_FALSE(p.ok()) << body;
    if (!p.ok()) {
      EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

TEST(ChatResponseTest, ExtractsServerErrorMessages) {
  EXPECT_EQ(ErrorMessageFromBody(R"({"error":{"message":"Rate limit reached","type":"x"}})", 100),
            "Rate limit reached");
  EXPECT_EQ(
      ErrorMessageFromBody(
          R"({"object":"error","message":"This model's maximum context length is 4096 tokens.","code":400})",
          200),
      "This model's maximum context length is 4096 tokens.");
  EXPECT_EQ(ErrorMessageFromBody(R"({"detail":"Not Found"})", 100), "Not Found");
  EXPECT_EQ(ErrorMessageFromBody("  upstream connect error  ", 100), "upstream connect error");
  EXPECT_EQ(ErrorMessageFromBody(std::string(500, 'x'), 10), std::string(10, 'x') + "...");
}

TEST(ChatResponseTest, TruncatesOnUtf8Boundaries) {
  std::string text = "ab\xC3\xA9";  // "abé"
  EXPECT_EQ(TruncateText(text, 3), "ab...");
  EXPECT_EQ(TruncateText(text, 4), text);
}

TEST(RedactTest, RemovesSecretAndBearerTokens) {
  std::string secret = "sk-live-0123456789";
  std::string text =
      "bad key sk-live-0123456789; header was Authorization: Bearer sk-live-0123456789 "
      "and BEARER other-token\"";
  std::string out = RedactSecrets(text, secret);
  EXPECT_EQ(out.find(secret), std::string::npos) << out;
  EXPECT_EQ(out.find("other-token"), std::string::npos) << out;
  EXPECT_NE(out.find("[redacted]"), std::string::npos);
  EXPECT_EQ(RedactSecrets("nothing to hide", ""), "nothing to hide");
  EXPECT_EQ(RedactSecrets("Bearer", ""), "Bearer");
}

// --- API keys ------------------------------------------------------------------

void WriteFileWithMode(const std::string& path, const std::string& data, mode_t mode) {
  std::ofstream(path) << data;
  ASSERT_EQ(::chmod(path.c_str(), mode), 0);
}

TEST(ApiKeyTest, EnvironmentTakesPrecedence) {
  ::setenv("MATRIX_LLM_TEST_KEY", "  sk-from-env \n", 1);
  auto key = ReadApiKey("MATRIX_LLM_TEST_KEY", "/nonexistent/key");
  ::unsetenv("MATRIX_LLM_TEST_KEY");
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(*key, "sk-from-env");
}

TEST(ApiKeyTest, ReadsOwnerOnlyFileTrimmed) {
  matrix::testing::TempDir dir;
  std::string path = dir.File("key");
  WriteFileWithMode(path, "  sk-from-file\n\n", 0600);
  auto key = ReadApiKey("MATRIX_LLM_TEST_KEY_UNSET", path);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(*key, "sk-from-file");
}

TEST(ApiKeyTest, RefusesFileReadableByOthersWithoutQuotingKey) {
  matrix::testing::TempDir dir;
  std::string path = dir.File("key");
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    WriteFileWithMode(path, "sk-shared-secret\n", mode);
    auto key = ReadApiKey("", path);
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(key.status().message().find(path), std::string::npos);
    EXPECT_EQ(key.status().message().find("sk-shared-secret"), std::string::npos);
  }
}

TEST(ApiKeyTest, MissingOrEmptyFileIsFailedPrecondition) {
  matrix::testing::TempDir dir;
  auto missing = ReadApiKey("", dir.File("absent"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find(dir.File("absent")), std::string::npos);

  WriteFileWithMode(dir.File("empty"), " \n", 0600);
  auto empty = ReadApiKey("", dir.File("empty"));
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kFailedPrecondition);

  auto dir_as_file = ReadApiKey("", dir.path());
  EXPECT_FALSE(dir_as_file.ok());
}

TEST(ApiKeyTest, NoSourceIsNotFound) {
  auto key = ReadApiKey("MATRIX_LLM_TEST_KEY_UNSET", "");
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().code(), StatusCode::kNotFound);
  EXPECT_NE(key.status().message().find("MATRIX_LLM_TEST_KEY_UNSET"), std::string::npos);
}

// --- Registered endpoints ---------------------------------------------------

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

TEST(EndpointDirectoryTest, ReadsEveryRegistrationTrimmedSortedAndUnique) {
  matrix::testing::TempDir dir;
  WriteText(dir.File("10.0.0.2_8000"), "http://10.0.0.2:8000/v1\n");
  WriteText(dir.File("10.0.0.1_8000"), "  \thttp://10.0.0.1:8000/v1  \r\n\n");
  WriteText(dir.File("gpu3_443"), "https://gpu3:443/v1");
  WriteText(dir.File("copy_of_gpu3"), "https://gpu3:443/v1\n");  // duplicate
  std::vector<std::string> got = ScanRegisteredEndpoints(dir.path());
  EXPECT_EQ(got, (std::vector<std::string>{"http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1",
                                           "https://gpu3:443/v1"}));
}

TEST(EndpointDirectoryTest, SkipsHiddenTemporaryAndNonRegularFiles) {
  matrix::testing::TempDir dir;
  WriteText(dir.File("10.0.0.1_8000"), "http://10.0.0.1:8000/v1\n");
  WriteText(dir.File(".10.0.0.2_8000"), "http://10.0.0.2:8000/v1\n");
  WriteText(dir.File("10.0.0.3_8000.tmp"), "http://10.0.0.3:8000/v1\n");
  // The temporary name WriteFileAtomic uses while a registration is written.
  WriteText(dir.File("10.0.0.4_8000.tmp.4242"), "http://10.0.0.4:80");
  ASSERT_EQ(::mkdir(dir.File("subdir").c_str(), 0755), 0);
  WriteText(dir.File("subdir/10.0.0.5_8000"), "http://10.0.0.5:8000/v1\n");
  // A symbolic link to a regular file counts; a dangling one is skipped.
  WriteText(dir.File("target.txt"), "http://10.0.0.6:8000/v1\n");
  ASSERT_EQ(::symlink(dir.File("target.txt").c_str(), dir.File("10.0.0.6_8000").c_str()), 0);
  ASSERT_EQ(::symlink(dir.File("nowhere").c_str(), dir.File("10.0.0.7_8000").c_str()), 0);
  EXPECT_EQ(ScanRegisteredEndpoints(dir.path()),
            (std::vector<std::string>{"http://10.0.0.1:8000/v1", "http://10.0.0.6:8000/v1"}));
}

TEST(EndpointDirectoryTest, InvalidRegistrationsAreSkippedWithAWarningNamingTheFile) {
  matrix::testing::TempDir dir;
  WriteText(dir.File("good_8000"), "http://10.0.0.1:8000/v1\n");
  WriteText(dir.File("empty_1"), "  \n");
  WriteText(dir.File("garbage_2"), "not a url\n");
  WriteText(dir.File("ftp_3"), "ftp://10.0.0.3/v1\n");
  WriteText(dir.File("two_lines_4"), "http://10.0.0.4:8000/v1\nhttp://10.0.0.5:8000/v1\n");
  WriteText(dir.File("huge_5"), "http://10.0.0.6:8000/v1" + std::string(5000, ' ') + "x");
  WriteText(dir.File("nohost_6"), "http:///v1\n");
  LogLevel old_level = GetLogLevel();
  SetLogLevel(LogLevel::kInfo);
  ::testing::internal::CaptureStderr();
  std::vector<std::string> got = ScanRegisteredEndpoints(dir.path());
  std::string logs = ::testing::internal::GetCapturedStderr();
  SetLogLevel(old_level);
  EXPECT_EQ(got, (std::vector<std::string>{"http://10.0.0.1:8000/v1"}));
  for (const char* name : {"empty_1", "garbage_2", "ftp_3", "two_lines_4", "huge_5", "nohost_6"})
    EXPECT_NE(logs.find(dir.File(name) + " skipped"), std::string::npos) << name << "\n" << logs;
  EXPECT_EQ(logs.find("good_8000"), std::string::npos) << logs;
}

TEST(EndpointDirectoryTest, MissingDirectoryIsAnEmptyList) {
  matrix::testing::TempDir dir;
  LogLevel old_level = GetLogLevel();
  SetLogLevel(LogLevel::kInfo);
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(ScanRegisteredEndpoints(dir.File("models/llama")).empty());
  std::string logs = ::testing::internal::GetCapturedStderr();
  SetLogLevel(old_level);
  EXPECT_EQ(logs, "");
  EXPECT_TRUE(ScanRegisteredEndpoints(dir.path()).empty());  // exists, empty
}

}  // namespace
}  // namespace matrix::llm
