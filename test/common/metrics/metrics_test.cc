// Unit: the metrics facade. Values recorded through handles show up in the
// text exposition with their labels; rejected registrations are counted and
// give handles that record nothing; every component's metric set registers
// cleanly.
#include "common/metrics/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/metrics/broker_metrics.h"
#include "common/metrics/sim_metrics.h"
#include "common/metrics/store_metrics.h"
#include "common/metrics/worker_metrics.h"

namespace matrix::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsRegistryTest, CounterWithLabelsAppearsInExposition) {
  MetricsRegistry registry;
  Counter puts = registry.Counter("matrix_test_requests_total", "Requests.", {{"type", "put"}});
  Counter gets = registry.Counter("matrix_test_requests_total", "Requests.", {{"type", "get"}});
  puts.Inc();
  puts.Inc(2);
  gets.Inc();
  puts.Inc(-5);  // ignored: counters never go down
  EXPECT_EQ(puts.Value(), 3);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# HELP matrix_test_requests_total Requests.\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE matrix_test_requests_total counter\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_requests_total{type=\"put\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_requests_total{type=\"get\"} 1\n"));
  EXPECT_EQ(registry.errors(), 0);
}

TEST(MetricsRegistryTest, GaugeSetIncDec) {
  MetricsRegistry registry;
  GaugeFamily depth = registry.GaugeFamily("matrix_test_queue_depth", "Queued messages.");
  Gauge judge = depth.With({{"role", "judge"}});
  judge.Set(10);
  judge.Inc(5);
  judge.Dec();
  EXPECT_EQ(judge.Value(), 14);
  // The same labels name the same series.
  EXPECT_EQ(depth.With({{"role", "judge"}}).Value(), 14);
  depth.With({{"role", "teacher"}}).Set(0.5);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE matrix_test_queue_depth gauge\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_queue_depth{role=\"judge\"} 14\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_queue_depth{role=\"teacher\"} 0.5\n"));
}

TEST(MetricsRegistryTest, HistogramBucketsSumAndCount) {
  MetricsRegistry registry;
  HistogramFamily latency =
      registry.HistogramFamily("matrix_test_latency_seconds", "Latency.", {0.01, 0.1, 1});
  Histogram h = latency.With({{"model", "m1"}});
  h.Observe(0.005);
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(5);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE matrix_test_latency_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_latency_seconds_count{model=\"m1\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_latency_seconds_sum{model=\"m1\"} 5.555\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_latency_seconds_bucket{model=\"m1\",le=\"0.01\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_latency_seconds_bucket{model=\"m1\",le=\"0.1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_latency_seconds_bucket{model=\"m1\",le=\"1\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("matrix_test_latency_seconds_bucket{model=\"m1\",le=\"+Inf\"} 4\n"));
}

TEST(MetricsRegistryTest, DefaultHandlesRecordNothing) {
  Counter c;
  Gauge g;
  Histogram h;
  c.Inc();
  g.Set(3);
  h.Observe(1);
  EXPECT_FALSE(c.valid());
  EXPECT_EQ(c.Value(), 0);
  EXPECT_EQ(g.Value(), 0);
  EXPECT_FALSE(CounterFamily().With({{"role", "x"}}).valid());
  // A default metric set is usable and records nothing.
  WorkerMetrics worker;
  worker.tasks_done.Inc();
  worker.ForRole("judge").in_flight.Set(2);
  EXPECT_EQ(worker.tasks_done.Value(), 0);
}

TEST(MetricsRegistryTest, RejectedRegistrationsAreCountedAndInert) {
  MetricsRegistry registry;
  Counter bad_name = registry.Counter("matrix bad name", "Help.");
  EXPECT_FALSE(bad_name.valid());
  EXPECT_EQ(registry.errors(), 1);

  registry.Counter("matrix_test_things_total", "Things.");
  Gauge clash = registry.Gauge("matrix_test_things_total", "Same name, other type.");
  EXPECT_FALSE(clash.valid());
  EXPECT_EQ(registry.errors(), 2);

  EXPECT_FALSE(registry.Gauge("matrix_test_no_help", "").valid());
  EXPECT_EQ(registry.errors(), 3);

  EXPECT_FALSE(registry.Histogram("matrix_test_unsorted_seconds", "Help.", {1, 0.5}).valid());
  EXPECT_EQ(registry.errors(), 4);

  Counter bad_label = registry.Counter("matrix_test_labelled_total", "Help.", {{"bad-label", "x"}});
  EXPECT_FALSE(bad_label.valid());
  EXPECT_EQ(registry.errors(), 5);

  bad_name.Inc();
  EXPECT_THAT(registry.Serialize(), Not(HasSubstr("bad")));
}

TEST(MetricsBucketsTest, LatencySizeAndCountBuckets) {
  for (const auto& buckets : {LatencyBuckets(), SizeBuckets(), CountBuckets()}) {
    ASSERT_FALSE(buckets.empty());
    for (size_t i = 1; i < buckets.size(); ++i) EXPECT_LT(buckets[i - 1], buckets[i]);
  }
  EXPECT_EQ(LatencyBuckets().front(), 0.001);
  EXPECT_EQ(LatencyBuckets().back(), 120);
  EXPECT_EQ(SizeBuckets().front(), 64);
  EXPECT_EQ(SizeBuckets().back(), 64 << 20);
  EXPECT_EQ(CountBuckets().back(), 1024);
  EXPECT_EQ(ExponentialBuckets(1, 10, 3), (std::vector<double>{1, 10, 100}));
}

TEST(MetricsRegistryTest, ProcessMetrics) {
  MetricsRegistry registry;
  FakeClock clock;  // WallMicros() = 1.7e15 + 1e6 at start
  RegisterProcessMetrics(registry, clock);
  const std::string text = registry.Serialize();
  EXPECT_THAT(text,
              HasSubstr("matrix_build_info{version=\"" + std::string(BuildVersion()) + "\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_process_start_time_seconds 1700000001\n"));
}

TEST(MetricSetsTest, AllComponentSetsRegisterInOneRegistry) {
  MetricsRegistry registry;
  BrokerMetrics broker(registry);
  StoreMetrics store(registry);
  WorkerMetrics worker(registry);
  SimMetrics sim(registry);
  EXPECT_EQ(registry.errors(), 0);
  EXPECT_TRUE(broker.deliveries.valid());
  EXPECT_TRUE(store.puts.valid());
  EXPECT_TRUE(worker.tasks_done.valid());
  EXPECT_TRUE(sim.generated_tokens.valid());

  worker.tasks_done.Inc(2);
  worker.tasks_filtered.Inc();
  worker.ForLlmModel("m1").prompt_tokens.Inc(100);
  worker.LlmError("m1", "http://10.0.0.1:8000/v1", "timeout").Inc();
  sim.Request("/v1/chat/completions", 429).Inc();
  const std::string text = registry.Serialize();
  EXPECT_THAT(text, HasSubstr("matrix_worker_tasks_total{status=\"done\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("matrix_worker_tasks_total{status=\"filtered\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_worker_llm_prompt_tokens_total{model=\"m1\"} 100\n"));
  EXPECT_THAT(text, HasSubstr("matrix_worker_llm_errors_total{endpoint=\"http://10.0.0.1:8000/v1\","
                              "kind=\"timeout\",model=\"m1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_sim_requests_total{endpoint=\"/v1/chat/completions\","
                              "status=\"429\"} 1\n"));

  // A second set on the same registry shares the series.
  BrokerMetrics again(registry);
  broker.acks.Inc(3);
  EXPECT_EQ(again.acks.Value(), 3);
  EXPECT_EQ(registry.errors(), 0);
}

}  // namespace
}  // namespace matrix::metrics
