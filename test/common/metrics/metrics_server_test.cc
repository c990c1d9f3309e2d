// Component: MetricsServer over real HTTP on loopback. Every component's
// metric set, with values recorded, is scraped with curl and must pass
// `promtool check metrics` without a single report; the server serves nothing
// but /metrics, publishes its address, stops promptly, and reports bind
// failures as Status.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/metrics/broker_metrics.h"
#include "common/metrics/metrics.h"
#include "common/metrics/sim_metrics.h"
#include "common/metrics/store_metrics.h"
#include "common/metrics/worker_metrics.h"
#include "test/common/metrics/scrape_util.h"
#include "test/support/test_util.h"

namespace matrix::metrics {
namespace {

using ::testing::HasSubstr;

// Records a few values in every set, as the daemons would.
void RecordSamples(BrokerMetrics& broker, StoreMetrics& store, WorkerMetrics& worker,
                   SimMetrics& sim) {
  broker.queue_depth.With({{"role", "teacher"}}).Set(7);
  broker.queue_oldest_age_seconds.With({{"role", "teacher"}}).Set(1.25);
  broker.credit_free.With({{"role", "teacher"}}).Set(3);
  broker.messages_received.With({{"type", "submit"}}).Inc(4);
  broker.messages_sent.With({{"type", "deliver"}}).Inc(2);
  broker.deliveries.Inc(5);
  broker.payload_received_bytes.Inc(4096);

  store.memory_objects.Set(2);
  store.memory_bytes.Set(1 << 20);
  store.puts.Inc(2);
  store.get_misses.Inc();
  store.request_duration_seconds.With({{"type", "put"}}).Observe(0.0002);

  worker.tasks_admitted.Inc(10);
  worker.tasks_done.Inc(8);
  worker.tasks_lost.Inc();
  WorkerRoleMetrics judge = worker.ForRole("judge");
  judge.in_flight.Set(3);
  judge.step_duration_seconds.Observe(0.8);
  judge.queue_wait_seconds.Observe(0.01);
  WorkerLlmEndpointMetrics ep = worker.ForLlmEndpoint("llama", "http://127.0.0.1:8000/v1");
  ep.requests.Inc(9);
  ep.retries.Inc();
  worker.LlmError("llama", "http://127.0.0.1:8000/v1", "http_5xx").Inc();
  WorkerLlmModelMetrics llama = worker.ForLlmModel("llama");
  llama.request_duration_seconds.Observe(2.5);
  llama.prompt_tokens.Inc(1200);
  llama.completion_tokens.Inc(300);
  worker.hop_bytes.Observe(3000);
  worker.records_written.Inc(8);
  worker.Refused("malformed").Inc();

  sim.Request("/v1/chat/completions", 200).Inc(9);
  sim.Fault("http_500").Inc();
  sim.active_sequences.Set(4);
  sim.generated_tokens.Inc(300);
  sim.batch_size.Observe(4);
  sim.step_duration_seconds.Observe(0.02);
}

TEST(MetricsServerTest, ServesEverySetCleanForPromtool) {
  MetricsRegistry registry;
  FakeClock clock;
  RegisterProcessMetrics(registry, clock);
  BrokerMetrics broker(registry);
  StoreMetrics store(registry);
  WorkerMetrics worker(registry);
  SimMetrics sim(registry);
  ASSERT_EQ(registry.errors(), 0);
  RecordSamples(broker, store, worker, sim);

  auto server = MetricsServer::Create(registry, "127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_GT((*server)->port(), 0);
  const std::string address = (*server)->address();
  EXPECT_EQ(address, "127.0.0.1:" + std::to_string((*server)->port()));

  std::string text;
  ASSERT_EQ(testing::HttpGet(address, "/metrics", &text), 0) << text;
  EXPECT_THAT(text, HasSubstr("matrix_broker_queue_depth{role=\"teacher\"} 7\n"));
  EXPECT_THAT(text, HasSubstr("matrix_broker_messages_received_total{type=\"submit\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("matrix_store_request_duration_seconds_count{type=\"put\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_worker_tasks_total{status=\"lost\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_worker_tasks_in_flight{role=\"judge\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("matrix_worker_llm_completion_tokens_total{model=\"llama\"} 300\n"));
  EXPECT_THAT(text, HasSubstr("matrix_sim_faults_injected_total{kind=\"http_500\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_build_info{version="));
  // Values recorded after a scrape show in the next one.
  broker.deliveries.Inc();
  ASSERT_EQ(testing::HttpGet(address, "/metrics", &text), 0) << text;
  EXPECT_THAT(text, HasSubstr("matrix_broker_deliveries_total 6\n"));

  // Nothing but /metrics is served.
  EXPECT_EQ(testing::HttpStatus(address, "/"), 404);
  EXPECT_EQ(testing::HttpStatus(address, "/quit"), 404);

  testing::TempDir run_dir;
  ASSERT_TRUE((*server)->PublishEndpoint(run_dir.path(), "worker-3").ok());
  auto published = ReadFile(run_dir.path() + "/endpoints/worker-3.metrics");
  ASSERT_TRUE(published.ok());
  EXPECT_EQ(*published, address + "\n");

  // Stopping does not wait out civetweb's ~2 s accept poll.
  const auto stop_start = std::chrono::steady_clock::now();
  server->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - stop_start, std::chrono::milliseconds(1000));
  std::string after_stop;
  EXPECT_NE(testing::HttpGet(address, "/metrics", &after_stop), 0);

  if (!testing::HavePromtool()) GTEST_SKIP() << "promtool not installed";
  std::string report;
  EXPECT_EQ(testing::PromtoolCheckMetrics(text, &report), 0) << report;
  EXPECT_EQ(report, "") << text;
}

TEST(MetricsServerTest, BindFailuresAreStatuses) {
  MetricsRegistry registry;
  auto malformed = MetricsServer::Create(registry, "localhost");
  EXPECT_EQ(malformed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsServer::Create(registry, "127.0.0.1:99999").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsServer::Create(registry, "::1:0").status().code(), StatusCode::kInvalidArgument);

  auto first = MetricsServer::Create(registry, "127.0.0.1:0");
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto taken = MetricsServer::Create(registry, (*first)->address());
  EXPECT_EQ(taken.status().code(), StatusCode::kUnavailable) << taken.status().ToString();
}

}  // namespace
}  // namespace matrix::metrics
