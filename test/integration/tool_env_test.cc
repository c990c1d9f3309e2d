// Integration: tool environments under `matrix run` with real processes:
// Tau2 retail end to end on the simulator, published MCP servers unchanged,
// and the failures that must cost one task at most (an environment killed
// mid-task) or nothing (a worker killed: no environment outlives it).
#include <signal.h>

#include <gtest/gtest.h>

#include <set>
#include <sstream>
#include <thread>

#include "common/base/files.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

// Process ids whose command line matches `pattern` (pgrep -f).
std::vector<int> Pids(const std::string& pattern) {
  std::string out;
  RunCommand("pgrep -f '" + pattern + "' || true", &out);
  std::vector<int> pids;
  std::istringstream in(out);
  for (int pid; in >> pid;) pids.push_back(pid);
  return pids;
}

bool Alive(int pid) { return ::kill(pid, 0) == 0; }

// The Python process of a Tau2 environment (not its bwrap launcher).
const char kEnvProcess[] = "^/usr/bin/python3 [^ ]*envs/tau2/tau2_env.py";

std::vector<std::string> Tau2Run(const TempDir& dir, int tasks, const std::string& speed) {
  return {BinPath("matrix"), "run", SourcePath("configs/tau2_retail.yaml"), "dataset.limit=" + std::to_string(tasks),
          "run.max_concurrent_tasks=" + std::to_string(tasks), "simulator.speed=" + speed, "--output",
          dir.File("out"), "--quiet"};
}

TEST(ToolEnvTest, Tau2RetailRunsEndToEndAndLeavesNoEnvironment) {
  TempDir dir;
  ChildProcess run(Tau2Run(dir, 30, "20"), dir.File("run.log"));
  size_t peak = 0;
  while (run.Running()) {
    peak = std::max(peak, Pids(kEnvProcess).size());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  int rc = run.Wait(1000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  EXPECT_GT(peak, 0u) << "no environment process was ever seen";
  EXPECT_TRUE(Pids(kEnvProcess).empty()) << "environment processes left after the run";

  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), 30u);
  EXPECT_TRUE(dups.empty());
  int with_tools = 0, tool_results = 0;
  for (const auto& r : records) {
    ASSERT_EQ(r["status"], "done") << r.dump().substr(0, 2000);
    const std::string reason = r["reason"];
    EXPECT_TRUE(reason == "user_stop" || reason == "max_steps" || reason == "too_many_errors") << reason;
    ASSERT_TRUE(r["vars"]["reward"].is_number()) << r["vars"].dump();
    EXPECT_TRUE(r["vars"]["reward_info"].contains("db_hash")) << r["vars"].dump();
    EXPECT_EQ(r["vars"]["reward_info"]["termination"], reason);
    const Json& turns = r["turns"];
    EXPECT_EQ(turns[0]["content"], "Hi! How can I help you today?");
    EXPECT_EQ(turns[0]["role"], "agent");
    bool called = false;
    for (const auto& t : turns) {
      if (t.contains("tool_calls")) called = true;
      if (t.contains("tool_call_id")) {
        ++tool_results;
        EXPECT_EQ(t["role"], "env");
        EXPECT_TRUE(t["content"].is_string());
      }
    }
    with_tools += called;
    if (reason == "user_stop") {
      EXPECT_NE(turns.back()["content"].get<std::string>().find("###STOP###"), std::string::npos);
    }
  }
  EXPECT_GT(with_tools, 10) << "most episodes call tools";
  EXPECT_GT(tool_results, 10);
}

TEST(ToolEnvTest, AKilledEnvironmentEndsOnlyItsTaskWithEnvError) {
  TempDir dir;
  ChildProcess run(Tau2Run(dir, 40, "3"), dir.File("run.log"));
  ASSERT_TRUE(WaitUntil([&] { return Pids(kEnvProcess).size() >= 3; }, 60000));
  int victim = Pids(kEnvProcess)[0];
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  int rc = run.Wait(240000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  auto records = ReadRecords(dir.File("out"));
  EXPECT_EQ(records.size(), 40u);
  int env_errors = 0, done = 0;
  for (const auto& r : records) {
    if (r["reason"] == "env_error") {
      ++env_errors;
      EXPECT_EQ(r["status"], "failed");
      EXPECT_NE(r["error"].get<std::string>().find("signal 9"), std::string::npos) << r["error"];
    }
    done += r["status"] == "done";
  }
  EXPECT_EQ(env_errors, 1);
  EXPECT_EQ(done, 39);
  EXPECT_TRUE(Pids(kEnvProcess).empty());
}

TEST(ToolEnvTest, AKilledWorkerLeavesNoEnvironmentBehindAndItsTasksRunAgain) {
  TempDir dir;
  ChildProcess run(Tau2Run(dir, 40, "3"), dir.File("run.log"));
  ASSERT_TRUE(WaitUntil([&] { return Pids(kEnvProcess).size() >= 5; }, 60000));
  std::vector<int> envs = Pids(kEnvProcess);
  std::vector<int> workers = Pids("[m]atrix-worker.*" + dir.path());
  ASSERT_EQ(workers.size(), 1u);
  ASSERT_EQ(::kill(workers[0], SIGKILL), 0);
  // The sandboxes die with their worker (parent-death signal), at once.
  EXPECT_TRUE(WaitUntil(
      [&] {
        for (int pid : envs)
          if (Alive(pid)) return false;
        return true;
      },
      3000));
  int rc = run.Wait(300000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), 40u);
  EXPECT_TRUE(dups.empty());
  for (const auto& r : records) EXPECT_EQ(r["status"], "done") << r["reason"] << ": " << r["error"];
  EXPECT_TRUE(Pids(kEnvProcess).empty());
}

void RunStockServer(const std::string& server) {
  TempDir dir;
  const std::string script =
      SourcePath("build/npm/node_modules/@modelcontextprotocol/" + server + "/dist/index.js");
  ASSERT_TRUE(FileExists(script)) << script << " is missing: scripts/setup debug installs it (npm)";
  std::string out;
  int rc = RunCommand(BinPath("matrix") + " run " + SourcePath("test/data/pipelines/mcp_stock.yaml") +
                          " params.server=" + server + " --output " + dir.File("out") + " --quiet 2>&1",
                      &out);
  ASSERT_EQ(rc, 0) << out;
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 20u);
  int results = 0, ok_results = 0, done = 0;
  for (const auto& r : records) {
    if (r["status"] != "done") {
      // The model picks the duration of server-everything's long-running
      // operation; one past the call limit is killed and named.
      ASSERT_EQ(r["reason"], "env_timeout") << r["reason"] << ": " << r["error"];
      EXPECT_NE(r["error"].get<std::string>().find("long-running"), std::string::npos) << r["error"];
      continue;
    }
    ++done;
    for (const auto& t : r["turns"]) {
      if (!t.contains("tool_call_id")) continue;
      ++results;
      bool error = t.contains("extra") && t["extra"].value("error", false);
      if (!error) ++ok_results;
    }
  }
  EXPECT_GE(done, 15);
  EXPECT_GT(results, 20) << "the model's calls reached the server";
  EXPECT_GT(ok_results, 5) << "and most answers were results";
  EXPECT_TRUE(Pids("[n]ode .*" + server).empty());
}

TEST(ToolEnvTest, ServerEverythingRunsAPipelinesToolCalls) { RunStockServer("server-everything"); }
TEST(ToolEnvTest, ServerMemoryRunsAPipelinesToolCalls) { RunStockServer("server-memory"); }

}  // namespace
}  // namespace matrix::testing
