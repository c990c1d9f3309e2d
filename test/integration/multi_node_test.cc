// Three `matrix node` processes on loopback sharing one run directory, as
// slurm/matrix.sbatch starts them on three machines, with two simulators
// registered as model servers in the run directory. Node 3 owns no partition
// and the roles' concurrency is small, so the loaded nodes' brokers hand work
// to it: the test checks that tasks crossed nodes (steals, forwards back to
// the owners' sinks), that objects were fetched from other nodes' stores,
// that a model server killed mid-run costs nothing and is put back when it
// returns on the same port, and that every task has exactly one record.
// (The same on a real SLURM cluster with network namespaces:
// test/slurm/cluster_run_test.sh.)
#include <signal.h>
#include <sys/types.h>

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/base/files.h"
#include "common/base/strings.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

// Sum of a counter over every daemon of every node that publishes metrics.
double SumMetric(const std::string& run_dir, const std::string& name) {
  std::string files;
  RunCommand("ls " + run_dir + "/nodes/*/endpoints/*.metrics 2>/dev/null", &files);
  double sum = 0;
  std::istringstream in(files);
  std::string path;
  while (std::getline(in, path)) {
    auto addr = ReadFile(path);
    if (!addr.ok()) continue;
    std::string body;
    if (RunCommand("curl -s --max-time 2 http://" + Trim(*addr) + "/metrics", &body) != 0) continue;
    std::istringstream lines(body);
    std::string line;
    while (std::getline(lines, line))
      if (line.rfind(name + " ", 0) == 0 || line.rfind(name + "{", 0) == 0)
        sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// One `matrix node` of a loopback job on configs/coral.yaml with 2 partitions.
std::unique_ptr<ChildProcess> StartNode(const std::string& run, const std::string& out, int index, int nodes,
                                        const std::string& job, int grace_s, int tasks,
                                        const std::vector<std::string>& overrides, const std::string& log) {
  std::vector<std::string> argv{BinPath("matrix"), "node", "--run-dir", run, "--output", out, "--node",
                                "n" + std::to_string(index + 1), "--node-index", std::to_string(index), "--nodes",
                                std::to_string(nodes), "--bind-host", "127.0.0.1", "--job", job, "--grace-s",
                                std::to_string(grace_s), SourcePath("configs/coral.yaml"),
                                "dataset.limit=" + std::to_string(tasks), "dataset.partitions=2"};
  argv.insert(argv.end(), overrides.begin(), overrides.end());
  return std::make_unique<ChildProcess>(argv, log);
}

// Registers a model server for "llama" in the run directory, as
// slurm/model_server.sbatch does.
void RegisterModelServer(const std::string& run, const std::string& name, const std::string& url) {
  ASSERT_TRUE(MakeDirs(run + "/models/llama").ok());
  ASSERT_TRUE(WriteFileAtomic(run + "/models/llama/" + name, url + "\n").ok());
}

TEST(MultiNodeTest, ThreeNodesShareWorkObjectsAndModelServers) {
  TempDir dir;
  const std::string run = dir.File("run"), out = dir.File("out");
  ASSERT_EQ(RunCommand(BinPath("matrix") + " keys " + run), 0);
  std::map<std::string, std::unique_ptr<ChildProcess>> sims;
  std::map<std::string, std::string> urls;
  auto start_sim = [&](const std::string& name, const std::string& listen) {
    sims[name] = std::make_unique<ChildProcess>(
        std::vector<std::string>{BinPath("matrix-llm-sim"), "--listen", listen, "--run-dir", dir.File("sim-" + name),
                                 "--name", "sim", "--speed", "3"},
        dir.File("sim-" + name + ".log"));
  };
  for (const std::string name : {"a", "b"}) {
    start_sim(name, "127.0.0.1:0");
    auto url = WaitEndpointFile(dir.File("sim-" + name), "sim", 10000);
    ASSERT_TRUE(url.ok());
    urls[name] = Trim(*url);
    RegisterModelServer(run, name, urls[name]);
  }
  const int kTasks = 240;
  std::vector<std::unique_ptr<ChildProcess>> nodes;
  for (int i = 0; i < 3; ++i) {
    nodes.push_back(StartNode(run, out, i, 3, "t1", 5, kTasks,
                              {"run.max_concurrent_tasks=80", "roles.teacher.concurrency=6",
                               "roles.student.concurrency=6",
                               // The killed server is probed again well before the run ends.
                               "models.llama.breaker_cooldown_s=2"},
                              dir.File("n" + std::to_string(i + 1) + ".log")));
  }
  // Work and objects cross nodes.
  double crossed = 0, remote_fetches = 0;
  ASSERT_TRUE(WaitUntil(
      [&] {
        crossed = SumMetric(run, "matrix_broker_steals_total") + SumMetric(run, "matrix_broker_forwards_total");
        remote_fetches = SumMetric(run, "matrix_worker_store_remote_fetches_total");
        return crossed > 0 && remote_fetches > 0;
      },
      90000))
      << "crossed " << crossed << ", remote fetches " << remote_fetches;
  // Prometheus file-SD lists every daemon of every node.
  for (int i = 1; i <= 3; ++i) {
    const std::string node = "n" + std::to_string(i);
    Json groups;
    ASSERT_TRUE(WaitUntil(
        [&] {
          auto text = ReadFile(run + "/prometheus/node-" + node + ".json");
          groups = text.ok() ? Json::parse(*text, nullptr, false) : Json();
          return groups.is_array() && groups.size() == 3;
        },
        10000))
        << node << ": " << groups.dump();
    std::set<std::string> daemons;
    for (const auto& g : groups) {
      EXPECT_EQ(g["labels"]["node"], node);
      EXPECT_EQ(g["targets"].size(), 1u);
      daemons.insert(g["labels"]["daemon"].get<std::string>());
    }
    EXPECT_EQ(daemons, (std::set<std::string>{"broker", "store", "worker"}));
  }
  // A model server dies mid-run and comes back on the same address.
  const size_t before = ReadRecords(out).size();
  ASSERT_LT(before, static_cast<size_t>(kTasks) * 3 / 4) << "the run ended too soon to kill a model server";
  sims["a"]->Signal(SIGKILL);
  sims["a"]->Wait(5000);
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(out) >= before + 20; }, 60000));
  const std::string port = urls["a"].substr(urls["a"].rfind(':') + 1, urls["a"].rfind('/') - urls["a"].rfind(':') - 1);
  start_sim("a", "127.0.0.1:" + port);
  for (auto& n : nodes) EXPECT_EQ(n->Wait(240000), 0);

  std::vector<std::string> dups;
  auto records = ReadRecords(out);
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(records.size(), static_cast<size_t>(kTasks));
  EXPECT_EQ(ids.size(), static_cast<size_t>(kTasks));
  EXPECT_TRUE(dups.empty()) << dups.size() << " duplicates";
  int done = 0;
  for (const auto& r : records) done += r.value("status", "") == "done";
  EXPECT_EQ(done, kTasks) << "tasks failed although another model server was up";
  // Every node ran its daemons and finished; the killed server was probed and put back.
  bool probed_back = false;
  for (int i = 1; i <= 3; ++i) {
    const std::string nd = run + "/nodes/n" + std::to_string(i);
    for (const char* f : {"endpoints/broker", "endpoints/store", "endpoints/worker-0.metrics", "logs/worker-0.log"})
      EXPECT_TRUE(FileExists(nd + "/" + f)) << nd << "/" << f;
    auto state = ReadFile(nd + "/node.json");
    ASSERT_TRUE(state.ok());
    EXPECT_EQ(Json::parse(*state).value("state", ""), "finished");
    auto progress = ReadFile(nd + "/progress/worker-0.json");
    ASSERT_TRUE(progress.ok());
    const Json worker = Json::parse(*progress);
    for (const auto& e : worker["endpoints"])
      if (e.value("url", "") == urls["a"] && e.value("state", "") == "healthy" && e.value("probes", 0) > 0)
        probed_back = true;
  }
  EXPECT_TRUE(probed_back) << "no worker put the restarted model server back";
}

// What `scancel` does to a job step: SIGTERM to every process of it at once,
// `matrix node` and its daemons alike. The daemons leave it to their node,
// which drains the workers first; every node exits 0, the output is whole
// lines, and the same command again (a new job) completes the rest.
TEST(MultiNodeTest, StepWideSigtermDrainsInOrderAndTheNextJobResumes) {
  TempDir dir;
  const std::string run = dir.File("run"), out = dir.File("out");
  ASSERT_EQ(RunCommand(BinPath("matrix") + " keys " + run), 0);
  ChildProcess sim({BinPath("matrix-llm-sim"), "--listen", "127.0.0.1:0", "--run-dir", dir.File("sim"), "--name",
                    "sim", "--speed", "2"},
                   dir.File("sim.log"));
  auto url = WaitEndpointFile(dir.File("sim"), "sim", 10000);
  ASSERT_TRUE(url.ok());
  RegisterModelServer(run, "sim", Trim(*url));
  const int kTasks = 200;
  auto start_nodes = [&](const std::string& job) {
    std::vector<std::unique_ptr<ChildProcess>> nodes;
    for (int i = 0; i < 2; ++i)
      nodes.push_back(StartNode(run, out, i, 2, job, 4, kTasks, {"run.max_concurrent_tasks=40"},
                                dir.File("n" + std::to_string(i + 1) + "-" + job + ".log")));
    return nodes;
  };
  {
    auto nodes = start_nodes("j1");
    ASSERT_TRUE(WaitUntil([&] { return CountRecords(out) >= 30; }, 90000));
    // Another job on the same run directory would own the same partitions.
    std::string refused;
    EXPECT_EQ(RunCommand(BinPath("matrix") + " node --run-dir " + run + " --node n9 --node-index 0 --nodes 1 --job other " +
                             SourcePath("configs/coral.yaml") + " 2>&1",
                         &refused),
              2);
    EXPECT_NE(refused.find("in use by job j1"), std::string::npos) << refused;
    // Every process of the "step" (the char class keeps the shell out).
    std::string pids;
    ASSERT_EQ(RunCommand("pgrep -f -- '" + run.substr(0, run.size() - 1) + "[n]'", &pids), 0);
    std::istringstream list(pids);
    int killed = 0;
    for (std::string pid; std::getline(list, pid);) killed += ::kill(std::stoi(pid), SIGTERM) == 0;
    EXPECT_GE(killed, 2 * 4);  // two nodes, each with a broker, a store and a worker
    for (auto& n : nodes) EXPECT_EQ(n->Wait(20000), 0);
  }
  const size_t first = ReadRecords(out).size();  // throws on a torn line
  EXPECT_LT(first, static_cast<size_t>(kTasks));
  for (const char* node : {"n1", "n2"}) {
    const std::string logs = run + "/nodes/" + node + "/logs/";
    auto worker = ReadFile(logs + "worker-0.log");
    ASSERT_TRUE(worker.ok());
    EXPECT_NE(worker->find("draining"), std::string::npos) << node;
    EXPECT_EQ(worker->find("second signal"), std::string::npos) << node << ": the drain was cut short";
    auto state = ReadFile(run + "/nodes/" + node + "/node.json");
    ASSERT_TRUE(state.ok());
    EXPECT_EQ(Json::parse(*state).value("state", ""), "drained");
  }
  {
    auto nodes = start_nodes("j2");
    for (auto& n : nodes) EXPECT_EQ(n->Wait(180000), 0);
  }
  std::vector<std::string> dups;
  auto records = ReadRecords(out);
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kTasks));
  EXPECT_TRUE(dups.empty()) << dups.size() << " duplicates";
}

}  // namespace
}  // namespace matrix::testing
