// Integration: tool environments under `matrix run` with real processes:
// Tau2 retail end to end on the simulator, published MCP servers unchanged,
// and the failures that must cost one task at most (an environment killed
// mid-task) or nothing (a worker killed: no environment outlives it).
#include <signal.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
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

// Environment processes of this test's run: runs get TMPDIR=<the test's
// folder>, so their sandboxes work in <folder>/matrix-env-*; `program` is
// the start of the process's command line (the environment, not bwrap).
std::vector<int> EnvPids(const TempDir& dir, const std::string& program) {
  std::vector<int> pids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::error_code e2;
    std::string cwd = std::filesystem::read_symlink(entry.path() / "cwd", e2);
    if (e2 || cwd.rfind(dir.path() + "/matrix-env-", 0) != 0) continue;
    auto cmdline = ReadFile(entry.path().string() + "/cmdline");
    if (cmdline.ok() && cmdline->rfind(program, 0) == 0) pids.push_back(std::stoi(name));
  }
  return pids;
}
std::vector<int> Tau2Envs(const TempDir& dir) { return EnvPids(dir, "/usr/bin/python3"); }

// The test's folder lets sandboxes (run as nobody under root) reach their own.
void OpenForSandboxes(const TempDir& dir) { ::chmod(dir.path().c_str(), 0711); }

std::vector<std::string> Tau2Run(const TempDir& dir, int tasks, const std::string& speed) {
  OpenForSandboxes(dir);
  return {"/usr/bin/env", "TMPDIR=" + dir.path(), BinPath("matrix"), "run", SourcePath("configs/tau2_retail.yaml"), "dataset.limit=" + std::to_string(tasks),
          "run.max_concurrent_tasks=" + std::to_string(tasks), "simulator.speed=" + speed, "--output",
          dir.File("out"), "--quiet"};
}

TEST(ToolEnvTest, Tau2RetailRunsEndToEndAndLeavesNoEnvironment) {
  TempDir dir;
  ChildProcess run(Tau2Run(dir, 30, "20"), dir.File("run.log"));
  size_t peak = 0;
  while (run.Running()) {
    peak = std::max(peak, Tau2Envs(dir).size());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  int rc = run.Wait(1000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  EXPECT_GT(peak, 0u) << "no environment process was ever seen";
  EXPECT_TRUE(Tau2Envs(dir).empty()) << "environment processes left after the run";

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
  ASSERT_TRUE(WaitUntil([&] { return Tau2Envs(dir).size() >= 3; }, 60000));
  int victim = Tau2Envs(dir)[0];
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  int rc = run.Wait(240000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 3) << (log.ok() ? *log : "");  // every task written; the victim's failed
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
  EXPECT_TRUE(Tau2Envs(dir).empty());
}

TEST(ToolEnvTest, AKilledWorkerLeavesNoEnvironmentBehindAndItsTasksRunAgain) {
  TempDir dir;
  ChildProcess run(Tau2Run(dir, 40, "3"), dir.File("run.log"));
  ASSERT_TRUE(WaitUntil([&] { return Tau2Envs(dir).size() >= 5; }, 60000));
  std::vector<int> envs = Tau2Envs(dir);
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
  EXPECT_TRUE(Tau2Envs(dir).empty());
}

void RunStockServer(const std::string& server) {
  TempDir dir;
  const std::string script =
      SourcePath("build/npm/node_modules/@modelcontextprotocol/" + server + "/dist/index.js");
  ASSERT_TRUE(FileExists(script)) << script << " is missing: scripts/setup debug installs it (npm)";
  OpenForSandboxes(dir);
  std::string out;
  int rc = RunCommand("TMPDIR=" + dir.path() + " " + BinPath("matrix") + " run " + SourcePath("test/data/pipelines/mcp_stock.yaml") +
                          " params.server=" + server + " --output " + dir.File("out") + " --quiet 2>&1",
                      &out);
  ASSERT_TRUE(rc == 0 || rc == 3) << out;  // 3: a call past the limit failed its task (see below)
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
  // The simulated model picks each operation's duration at random: 5 or 6
  // of 20 tasks were seen past the limit; most tasks still end done.
  EXPECT_GE(done, 10);
  EXPECT_GT(results, 20) << "the model's calls reached the server";
  EXPECT_GT(ok_results, 5) << "and most answers were results";
  EXPECT_TRUE(EnvPids(dir, "node").empty());
}

TEST(ToolEnvTest, ServerEverythingRunsAPipelinesToolCalls) { RunStockServer("server-everything"); }
TEST(ToolEnvTest, ServerMemoryRunsAPipelinesToolCalls) { RunStockServer("server-memory"); }

}  // namespace
}  // namespace matrix::testing
