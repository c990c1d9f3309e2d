// Integration: Coral against a simulator that fails 30 % of requests (429 with
// Retry-After, 500, 503, hangs, dropped connections, garbage bodies). The run
// completes, every task is written once, retries wait for Retry-After (measured
// by the simulator), and no call outlives its timeout.
#include <signal.h>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/base/files.h"
#include "common/base/strings.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

TEST(LlmFaultsTest, ThirtyPercentFaultsStillCompleteEveryTask) {
  TempDir dir;
  ChildProcess sim({BinPath("matrix-llm-sim"), "--listen", "127.0.0.1:0", "--port-file", dir.File("sim.port"),
                    "--speed", "5", "--fault-429", "0.10", "--retry-after-s", "0.3", "--fault-500", "0.05",
                    "--fault-503", "0.05", "--fault-hang", "0.03", "--fault-drop", "0.04", "--fault-malformed",
                    "0.03"},
                   dir.File("sim.log"));
  std::string port;
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto p = ReadFile(dir.File("sim.port"));
        if (p.ok() && !p->empty()) port = *p;
        return !port.empty();
      },
      10000));
  while (!port.empty() && (port.back() == '\n' || port.back() == ' ')) port.pop_back();
  std::string out;
  std::string cmd = BinPath("matrix") + " run " + SourcePath("configs/coral.yaml") +
                    " dataset.limit=80 run.max_concurrent_tasks=40 models.llama.endpoints=[http://" + port +
                    "/v1] models.llama.timeout_s=2 models.llama.max_retries=8 --output " + dir.File("out") +
                    " --quiet";
  const int rc = RunCommand(cmd, &out);
  ASSERT_TRUE(rc == 0 || rc == 3) << rc << "\n" << out;  // 3: every task written, some failed
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(records.size(), 80u);
  EXPECT_EQ(ids.size(), 80u);
  EXPECT_TRUE(dups.empty());
  int done = 0, retried_turns = 0;
  for (const auto& r : records) {
    EXPECT_FALSE(r["reason"].get<std::string>().empty());
    if (r["status"] == "done") {
      ++done;
    } else {
      EXPECT_TRUE(r.contains("error")) << r.dump();
    }
    for (const auto& t : r["turns"]) {
      if (t["attempts"].get<int>() > 1) ++retried_turns;
      // One call: at most 9 attempts of <= 2 s plus backoff, never a hang.
      EXPECT_LT((t["end_us"].get<int64_t>() - t["start_us"].get<int64_t>()) / 1e6, 60.0);
    }
  }
  EXPECT_GE(done, 76);  // a call fails for good only after 9 faulty attempts in a row
  EXPECT_GT(retried_turns, 20);
  std::string stats_text;
  ASSERT_EQ(RunCommand("curl -s http://" + port + "/stats", &stats_text), 0);
  Json stats = Json::parse(stats_text);
  for (const char* kind : {"http_429", "http_500", "http_503", "hang", "drop", "malformed"})
    EXPECT_GT(stats["faults_injected"][kind].get<int>(), 0) << kind << " " << stats.dump();
  std::cerr << "simulator: " << stats.dump() << "\n";
  EXPECT_GT(stats["retries_after_429"].get<int>(), 0) << stats.dump();
  EXPECT_EQ(stats["early_retries_after_429"].get<int>(), 0) << stats.dump();
  EXPECT_GE(stats["min_retry_gap_after_429_s"].get<double>(), 0.29) << stats.dump();
}

// The model's only endpoint goes away for 60 s mid-run and comes back on the
// same port: requests wait for it (connection failures use no retries),
// nothing is charged, and every task ends done.
TEST(LlmFaultsTest, AnEndpointDownForAMinuteCostsNoTask) {
  TempDir dir;
  // The simulator binds a port of its own; it comes back on that one.
  auto sim = std::make_unique<ChildProcess>(
      std::vector<std::string>{BinPath("matrix-llm-sim"), "--listen", "127.0.0.1:0", "--port-file",
                               dir.File("sim.port"), "--speed", "4"},
      dir.File("sim1.log"));
  std::string port;
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto p = ReadFile(dir.File("sim.port"));
        port = p.ok() ? Trim(*p) : "";
        return !port.empty();
      },
      10000));
  if (port.find(':') != std::string::npos) port = port.substr(port.rfind(':') + 1);
  const std::vector<std::string> sim_argv{BinPath("matrix-llm-sim"), "--listen", "127.0.0.1:" + port, "--speed", "4"};
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=300",
                    "run.max_concurrent_tasks=60", "models.llama.endpoints=[http://127.0.0.1:" + port + "/v1]",
                    "--output", dir.File("out"), "--run-dir", dir.File("run"), "--quiet"},
                   dir.File("run.log"));
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) >= 30; }, 60000)) << *ReadFile(dir.File("run.log"));
  sim->Signal(SIGKILL);
  sim->Wait(5000);
  std::this_thread::sleep_for(std::chrono::seconds(60));
  // No task failed while nothing could answer (a few in flight past their
  // last call may have finished).
  for (const auto& r : ReadRecords(dir.File("out"))) EXPECT_EQ(r["status"], "done") << r.dump();
  EXPECT_TRUE(run.Running());
  auto log = ReadFile(dir.File("run/logs/worker-0.log"));
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("marked unhealthy"), std::string::npos) << *log;
  sim = std::make_unique<ChildProcess>(sim_argv, dir.File("sim2.log"));
  EXPECT_EQ(run.Wait(240000), 0) << *ReadFile(dir.File("run.log"));
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), 300u);
  EXPECT_TRUE(dups.empty());
  for (const auto& r : records) EXPECT_EQ(r["status"], "done") << r.dump();
}

// The model never comes back: the run waits out the model's outage_s, then
// stops with the reason and exit 1, charging no task; a rerun would pick all
// of them up.
TEST(LlmFaultsTest, AModelThatStaysUnreachableStopsTheRunWithoutFailingTasks) {
  TempDir dir;
  // Nothing listens on port 1.
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=200",
                    "run.max_concurrent_tasks=20", "models.llama.endpoints=[http://127.0.0.1:1/v1]",
                    "models.llama.outage_s=5", "--output", dir.File("out"), "--run-dir", dir.File("run"),
                    "--progress-interval-s", "1", "--grace-s", "2"},
                   dir.File("run.log"));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run.Wait(60000), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(40));
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("MODEL llama UNREACHABLE"), std::string::npos) << *log;
  EXPECT_NE(log->find("no endpoint of model 'llama' has answered"), std::string::npos) << *log;
  for (const auto& r : ReadRecords(dir.File("out"))) ADD_FAILURE() << "a task was charged: " << r.dump();
}

}  // namespace
}  // namespace matrix::testing
