// Component: the real matrix-broker, matrix-store and matrix-llm-sim binaries publish
// <run_dir>/endpoints/<name>.metrics, serve /metrics that reflects the work
// they did, pass `promtool check metrics`, and still exit 0 on SIGTERM
// promptly.
#include <signal.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/store/store_client.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "test/common/metrics/scrape_util.h"
#include "test/support/store_driver.h"
#include "test/support/test_util.h"

namespace matrix {
namespace {

using ::testing::HasSubstr;

// Scrapes until the exposition contains every one of `wanted` (lines or
// fragments); returns the last exposition scraped.
std::string ScrapeUntil(const std::string& address, const std::vector<std::string>& wanted,
                        int timeout_ms = 10'000) {
  std::string text;
  testing::WaitUntil(
      [&] {
        if (testing::HttpGet(address, "/metrics", &text) != 0) return false;
        for (const auto& w : wanted)
          if (text.find(w) == std::string::npos) return false;
        return true;
      },
      timeout_ms);
  return text;
}

void ExpectPromtoolClean(const std::string& text) {
  if (!testing::HavePromtool()) {
    GTEST_SKIP() << "promtool not installed";
  }
  std::string report;
  EXPECT_EQ(testing::PromtoolCheckMetrics(text, &report), 0) << report;
  EXPECT_EQ(report, "") << text;
}

TEST(DaemonMetricsTest, BrokerServesQueueMetrics) {
  testing::TempDir dir;
  testing::ChildProcess broker({testing::BinPath("matrix-broker"), "--bind", "tcp://127.0.0.1:*",
                                "--run-dir", dir.path(), "--name", "broker"},
                               dir.File("broker.log"));
  auto endpoint = WaitEndpointFile(dir.path(), "broker", 10'000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  auto metrics_address = WaitEndpointFile(dir.path(), "broker.metrics", 10'000);
  ASSERT_TRUE(metrics_address.ok()) << metrics_address.status().ToString();
  EXPECT_THAT(*metrics_address, ::testing::StartsWith("127.0.0.1:"));

  // A source submits three tasks for a role nobody serves yet: they stay queued.
  transport::Context ctx;
  transport::SocketOptions options;
  options.identity = "source";
  auto source =
      transport::Socket::Connect(ctx, transport::Socket::Kind::kDealer, *endpoint, options);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  wire::SubmitMsg submit;
  std::vector<std::string> payloads;
  for (int i = 0; i < 3; ++i) {
    const std::string id = "t" + std::to_string(i);
    submit.items.push_back({0, "judge", id, false, true});
    wire::Task task;
    task.task_id = id;
    task.owner = "p0";
    task.input.text = "question " + id;
    payloads.push_back(wire::EncodeTask(task));
  }
  transport::Frames frames{wire::EncodeControl(wire::Control{"source", submit}), wire::PackPayloads(payloads)};
  ASSERT_TRUE((*source)->Send(frames).ok());

  const std::string text =
      ScrapeUntil(*metrics_address, {"matrix_broker_queue_depth{role=\"judge\"} 3\n",
                                     "matrix_broker_tasks_submitted_total 3\n"});
  EXPECT_THAT(text, HasSubstr("matrix_broker_queue_depth{role=\"judge\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("matrix_broker_messages_received_total{type=\"submit\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_broker_tasks_submitted_total 3\n"));
  EXPECT_THAT(text, HasSubstr("matrix_broker_credit_free{role=\"judge\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("matrix_broker_queue_oldest_age_seconds{role=\"judge\"}"));
  EXPECT_THAT(text, HasSubstr("matrix_broker_leases_outstanding 0\n"));
  EXPECT_THAT(text, HasSubstr("matrix_build_info{version="));
  EXPECT_THAT(text, HasSubstr("matrix_process_start_time_seconds "));
  ExpectPromtoolClean(text);

  source->reset();
  broker.Signal(SIGTERM);
  EXPECT_EQ(broker.Wait(5'000), 0);
}

TEST(DaemonMetricsTest, BrokerWithoutMetricsPublishesNoAddress) {
  testing::TempDir dir;
  testing::ChildProcess broker({testing::BinPath("matrix-broker"), "--bind", "tcp://127.0.0.1:*",
                                "--run-dir", dir.path(), "--metrics", ""},
                               dir.File("broker.log"));
  ASSERT_TRUE(WaitEndpointFile(dir.path(), "broker", 10'000).ok());
  EXPECT_FALSE(FileExists(dir.path() + "/endpoints/broker.metrics"));
  broker.Signal(SIGTERM);
  EXPECT_EQ(broker.Wait(15'000), 0);
}

TEST(DaemonMetricsTest, StoreServesObjectMetrics) {
  testing::TempDir dir;
  testing::ChildProcess store(
      {testing::BinPath("matrix-store"), "--bind", "ipc://" + dir.File("store.sock"), "--run-dir",
       dir.path(), "--name", "store", "--node", "n1", "--spill-dir", dir.File("spill"),
       "--memory-budget-mb", "1"},
      dir.File("store.log"));
  auto endpoint = WaitEndpointFile(dir.path(), "store", 10'000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  auto metrics_address = WaitEndpointFile(dir.path(), "store.metrics", 10'000);
  ASSERT_TRUE(metrics_address.ok()) << metrics_address.status().ToString();

  transport::Context ctx;
  auto client = store::StoreClient::Create(ctx, *endpoint, "n1", SystemClock::Get());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  int stored = 0;
  for (int i = 0; i < 2; ++i) {
    (*client)->Put(std::string(1000, static_cast<char>('a' + i)), [&](StatusOr<wire::ObjectRef> r) {
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      ++stored;
    });
  }
  ASSERT_TRUE(testing::DriveStoreClient(client->get(), [&] { return stored == 2; }));

  const std::string text = ScrapeUntil(*metrics_address, {"matrix_store_puts_total 2\n"});
  EXPECT_THAT(text, HasSubstr("matrix_store_puts_total 2\n"));
  EXPECT_THAT(text, HasSubstr("matrix_store_memory_objects 2\n"));
  EXPECT_THAT(text, HasSubstr("matrix_store_memory_bytes 2000\n"));
  EXPECT_THAT(text, HasSubstr("matrix_store_disk_objects 0\n"));
  EXPECT_THAT(text, HasSubstr("matrix_store_memory_budget_bytes 1048576\n"));
  EXPECT_THAT(text, HasSubstr("matrix_store_request_duration_seconds_count{type=\"put\"}"));
  EXPECT_THAT(text, HasSubstr("matrix_build_info{version="));
  ExpectPromtoolClean(text);

  client->reset();
  store.Signal(SIGTERM);
  EXPECT_EQ(store.Wait(5'000), 0);
}

TEST(DaemonMetricsTest, SimulatorServesRequestAndEngineMetrics) {
  testing::TempDir dir;
  testing::ChildProcess sim({testing::BinPath("matrix-llm-sim"), "--run-dir", dir.path(), "--name", "sim",
                             "--speed", "20", "--mean-output-tokens", "8"},
                            dir.File("sim.log"));
  auto endpoint = WaitEndpointFile(dir.path(), "sim", 10'000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  auto metrics_address = WaitEndpointFile(dir.path(), "sim.metrics", 10'000);
  ASSERT_TRUE(metrics_address.ok()) << metrics_address.status().ToString();

  const std::string host = endpoint->substr(7, endpoint->size() - 7 - 3);  // http://HOST:PORT/v1
  std::string answer;
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(testing::RunCommand("curl -sSf --max-time 10 -H 'Content-Type: application/json' -d "
                                  "'{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}' " +
                                      *endpoint + "/chat/completions",
                                  &answer),
              0)
        << answer;
  }
  EXPECT_EQ(testing::HttpStatus(host, "/nowhere"), 404);

  const std::string text = ScrapeUntil(
      *metrics_address,
      {"matrix_sim_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2\n",
       "matrix_sim_requests_total{endpoint=\"other\",status=\"404\"} 1\n"});
  EXPECT_THAT(text, HasSubstr("matrix_sim_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("matrix_sim_requests_total{endpoint=\"other\",status=\"404\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_sim_faults_injected_total{kind=\"http_429\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("matrix_sim_batch_size_count "));
  EXPECT_THAT(text, HasSubstr("matrix_sim_step_duration_seconds_count "));
  EXPECT_THAT(text, HasSubstr("matrix_sim_active_sequences 0\n"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("matrix_sim_generated_tokens_total 0\n")));
  EXPECT_THAT(text, HasSubstr("matrix_build_info{version="));
  ExpectPromtoolClean(text);
  sim.Signal(SIGTERM);
  EXPECT_EQ(sim.Wait(5'000), 0);
}

TEST(DaemonMetricsTest, SimulatorCountsInjectedFaults) {
  testing::TempDir dir;
  testing::ChildProcess sim({testing::BinPath("matrix-llm-sim"), "--run-dir", dir.path(), "--fault-429", "1"},
                            dir.File("sim.log"));
  auto endpoint = WaitEndpointFile(dir.path(), "llm-sim", 10'000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  auto metrics_address = WaitEndpointFile(dir.path(), "llm-sim.metrics", 10'000);
  ASSERT_TRUE(metrics_address.ok());
  std::string answer;
  testing::RunCommand("curl -s --max-time 10 -d '{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}' " +
                          *endpoint + "/chat/completions",
                      &answer);
  const std::string text =
      ScrapeUntil(*metrics_address, {"matrix_sim_faults_injected_total{kind=\"http_429\"} 1\n"});
  EXPECT_THAT(text, HasSubstr("matrix_sim_faults_injected_total{kind=\"http_429\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("matrix_sim_requests_total{endpoint=\"/v1/chat/completions\",status=\"429\"} 1\n"));
  sim.Signal(SIGTERM);
  EXPECT_EQ(sim.Wait(5'000), 0);
}

}  // namespace
}  // namespace matrix
