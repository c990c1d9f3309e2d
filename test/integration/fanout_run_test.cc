// Integration: the fan-out example configs with real processes (store,
// broker, workers, simulator): every branch runs as its own task, the
// aggregator sees them all, and a worker killed mid-graph loses nothing.
#include <signal.h>

#include <gtest/gtest.h>

#include <thread>

#include "common/base/files.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

std::string RunConfig(const std::string& config, const std::string& args, const std::string& out_dir) {
  std::string out;
  int rc = RunCommand(BinPath("matrix") + " run " + SourcePath(config) + " " + args + " simulator.speed=20 --output " +
                          out_dir + " --quiet",
                      &out);
  EXPECT_EQ(rc, 0) << out;
  return out;
}

TEST(FanOutRunTest, BestOfNRecordsEveryBranchTheVoteAndTheJudgesPick) {
  TempDir dir;
  RunConfig("configs/best_of_n.yaml", "dataset.limit=20 params.samples=4", dir.File("out"));
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), 20u);
  EXPECT_TRUE(dups.empty());
  ASSERT_EQ(records.size(), 20u);
  for (const auto& r : records) {
    ASSERT_EQ(r["status"], "done") << r.dump();
    const Json& v = r["vars"];
    ASSERT_EQ(v["branches"].size(), 4u) << r.dump();
    int64_t branch_tokens = 0;
    for (const auto& b : v["branches"]) {
      EXPECT_EQ(b["status"], "done") << b.dump();
      EXPECT_TRUE(b["value"].is_string() && b["value"].get<std::string>().size() == 1) << b.dump();
      branch_tokens += b["tokens"].get<int64_t>();
    }
    EXPECT_TRUE(v["voted"].is_string());
    EXPECT_GE(v["voted_votes"].get<int>(), 1);
    EXPECT_TRUE(v["judged"].is_string());
    EXPECT_TRUE(v.contains("reward"));
    // Four sampled answers (outside the conversation), then the judge, whose
    // prompt listed every candidate.
    ASSERT_EQ(r["turns"].size(), 5u);
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(r["turns"][t]["role"], "solver");
      EXPECT_EQ(r["turns"][t]["conversation"], false);
      EXPECT_EQ(r["turns"][t]["extra"]["fanout"], "samples");
    }
    EXPECT_EQ(r["turns"][4]["role"], "judge");
    EXPECT_EQ(r["counters"]["tokens"].get<int64_t>(),
              branch_tokens + r["turns"][4]["usage"]["prompt_tokens"].get<int64_t>() +
                  r["turns"][4]["usage"]["completion_tokens"].get<int64_t>());
    EXPECT_EQ(r["counters"]["llm_calls"], 5);
  }
}

TEST(FanOutRunTest, DebateRunsAFanOutInALoopAndDebatersReadTheLastRound) {
  TempDir dir;
  RunConfig("configs/debate.yaml", "dataset.limit=10 params.width=3 params.depth=3", dir.File("out"));
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 10u);
  for (const auto& r : records) {
    ASSERT_EQ(r["status"], "done") << r.dump();
    EXPECT_EQ(r["counters"]["round"], 3);
    ASSERT_EQ(r["turns"].size(), 9u) << r.dump();
    for (const auto& b : r["vars"]["previous"]) EXPECT_EQ(b["status"], "done") << b.dump();
    EXPECT_TRUE(r["vars"]["majority"].is_string());
  }
}

// Three workers; while the branches of 300 best-of-4 tasks run, two workers
// are killed (kill -9). Their branches are delivered again (or reported lost
// to the aggregator) and every task still ends exactly once, with a slot for
// each of its branches.
TEST(FanOutRunTest, WorkersKilledMidGraphLoseNoTask) {
  TempDir dir;
  const int kTasks = 300;
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/best_of_n.yaml"), "dataset.limit=300",
                    "params.samples=4", "run.max_concurrent_tasks=150", "simulator.speed=2", "--workers", "3",
                    "--output", dir.File("out"), "--run-dir", dir.File("run"), "--quiet"},
                   dir.File("run.log"));
  const std::string run_dir = dir.File("run");
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) >= 10; }, 60000));
  int killed = 0;
  for (const char* victim : {"worker-1", "worker-2", "worker-1"}) {
    int pid = PidOf("matrix-worker.*" + run_dir + ".*" + victim);
    if (pid > 0 && kill(pid, SIGKILL) == 0) ++killed;
    std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  int rc = run.Wait(240000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  EXPECT_GE(killed, 2);
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(records.size(), static_cast<size_t>(kTasks));
  EXPECT_EQ(ids.size(), static_cast<size_t>(kTasks));
  EXPECT_TRUE(dups.empty()) << dups.size() << " duplicates";
  for (const auto& r : records) {
    EXPECT_EQ(r["status"], "done") << r.dump();
    EXPECT_EQ(r["vars"]["branches"].size(), 4u) << r.dump();
  }
  // Steps the killed workers held (branches among them) were delivered again.
  auto summary = ReadFile(dir.File("out/summary.json"));
  ASSERT_TRUE(summary.ok());
  EXPECT_GT(Json::parse(*summary)["broker"]["redelivered"].get<int64_t>(), 0) << *summary;
}

}  // namespace
}  // namespace matrix::testing
