// Chaos: Coral on the simulator with several workers while kill -9 hits a
// random worker, the broker or the store every few seconds. The run must
// complete with every task exactly once and done.
#include <signal.h>

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <thread>

#include "common/base/files.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

// 1,000 tasks, 500 in flight, kill -9 of a random worker, the broker or the
// store every 4 s for about 30 s. Deaths of the infrastructure are not
// charged to the tasks that happened to be in flight: every task ends done.
TEST(ChaosTest, RandomKillsOfWorkersBrokerAndStoreLoseNothing) {
  TempDir dir;
  const int kTasks = 1000;
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=1000",
                    "run.max_concurrent_tasks=500", "simulator.speed=2", "--workers", "3", "--output",
                    dir.File("out"), "--run-dir", dir.File("run"), "--quiet"},
                   dir.File("run.log"));
  std::mt19937 rng(std::random_device{}());
  const std::string run_dir = dir.File("run");
  const std::vector<std::string> victims = {"matrix-worker.*" + run_dir + ".*worker-0",
                                            "matrix-worker.*" + run_dir + ".*worker-1",
                                            "matrix-worker.*" + run_dir + ".*worker-2",
                                            "matrix-broker.*" + run_dir, "matrix-store.*" + run_dir};
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) >= 20; }, 60000));
  std::vector<std::string> killed;
  // A process is not killed again within 12 s of its last kill: `matrix run`
  // rightly stops a process that dies five times in a row within 10 s of
  // starting (a crash loop), which random picks could otherwise mimic.
  std::vector<int> last_round(victims.size(), -100);
  for (int i = 0; i < 8 && run.Running(); ++i) {
    std::vector<size_t> rested;
    for (size_t v = 0; v < victims.size(); ++v)
      if (i - last_round[v] >= 3) rested.push_back(v);
    const size_t pick = rested[rng() % rested.size()];
    last_round[pick] = i;
    const std::string& victim = victims[pick];
    int pid = PidOf(victim);
    if (pid > 0 && kill(pid, SIGKILL) == 0) killed.push_back(victim.substr(0, victim.find(".*")));
    std::this_thread::sleep_for(std::chrono::seconds(4));
  }
  int rc = run.Wait(300000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  std::cerr << "killed:";
  for (auto& k : killed) std::cerr << " " << k;
  std::cerr << "\n";
  EXPECT_GE(killed.size(), 4u);
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(records.size(), static_cast<size_t>(kTasks));
  EXPECT_EQ(ids.size(), static_cast<size_t>(kTasks));
  EXPECT_TRUE(dups.empty()) << dups.size() << " duplicates";
  std::map<std::string, int> by_reason;
  for (const auto& r : records)
    if (r["status"] != "done") by_reason[r["reason"].get<std::string>() + ": " + r.value("error", "")]++;
  for (const auto& [why, n] : by_reason) ADD_FAILURE() << n << " tasks not done: " << why;
  // Counts add up across restarts: a restarted worker goes on from its predecessor's.
  Json summary = Json::parse(*ReadFile(dir.File("out/summary.json")));
  EXPECT_EQ(summary["resumed_from_earlier_runs"], 0) << summary.dump();
  EXPECT_EQ(summary["written_this_run"], kTasks) << summary.dump();
}

TEST(ChaosTest, SigtermThenResumeCompletesWithoutDuplicates) {
  TempDir dir;
  std::vector<std::string> argv = {BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=300",
                                   "run.max_concurrent_tasks=60", "simulator.speed=2", "--output", dir.File("out"),
                                   "--quiet", "--grace-s", "5"};
  {
    ChildProcess first(argv, dir.File("first.log"));
    ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) >= 40; }, 60000));
    first.Signal(SIGTERM);
    EXPECT_EQ(first.Wait(60000), 143);  // interrupted by SIGTERM, after a clean drain
  }
  size_t partial = ReadRecords(dir.File("out")).size();
  ASSERT_LT(partial, 300u);
  {
    // The interrupted run's summary counts what its files hold, drained records included.
    Json s = Json::parse(*ReadFile(dir.File("out/summary.json")));
    EXPECT_TRUE(s["interrupted"].get<bool>());
    EXPECT_EQ(s["records"].get<size_t>(), partial) << s.dump();
    EXPECT_EQ(s["written_this_run"].get<size_t>(), partial) << s.dump();
  }
  argv.push_back("--resume");
  ChildProcess second(argv, dir.File("second.log"));
  ASSERT_EQ(second.Wait(180000), 0);
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  TaskIds(records, &dups);
  EXPECT_EQ(records.size(), 300u);
  EXPECT_TRUE(dups.empty());
  for (const auto& r : records) EXPECT_EQ(r["status"], "done") << r.dump();
  Json s = Json::parse(*ReadFile(dir.File("out/summary.json")));
  EXPECT_EQ(s["resumed_from_earlier_runs"].get<size_t>(), partial);
}

}  // namespace
}  // namespace matrix::testing
