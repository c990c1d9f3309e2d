// Faults that must cost at most the task they belong to, with `matrix run`
// end to end on Coral and the simulator: rows that are not UTF-8, a worker
// that crashes on one row every time, configuration a worker would die of,
// a killed supervisor and a second run on the same output, a full disk, and
// malformed messages sent to the broker's and the store's sockets.
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <thread>

#include "common/base/files.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

// The first `n` rows of the bundled MMLU-Pro sample.
std::vector<std::string> SampleRows(size_t n) {
  std::ifstream in(SourcePath("test/data/mmlu_pro_2000.jsonl"));
  std::vector<std::string> rows;
  for (std::string line; rows.size() < n && std::getline(in, line);) rows.push_back(line);
  return rows;
}

void WriteRows(const std::string& path, const std::vector<std::string>& rows) {
  std::ofstream out(path, std::ios::binary);
  for (const auto& r : rows) out << r << "\n";
}

std::vector<std::string> CoralRun(const TempDir& dir, const std::string& dataset, int tasks) {
  return {BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.path=" + dataset,
          "dataset.limit=" + std::to_string(tasks), "simulator.speed=4", "--output", dir.File("out"),
          "--run-dir", dir.File("run"), "--quiet"};
}

std::string Log(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? *text : "";
}

// user+sys seconds of a live process.
double CpuSeconds(int pid) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (!stat.ok()) return -1;
  std::istringstream in(stat->substr(stat->rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && in >> field; ++i)
    if (i == 14 || i == 15) ticks += std::stod(field);
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

TEST(FaultTest, RowsThatAreNotUtf8BecomeInvalidInputRecords) {
  TempDir dir;
  auto rows = SampleRows(30);
  rows.insert(rows.begin() + 3, "{\"question\":\"caf\xe9\",\"options\":[\"a\"],\"answer\":\"A\"}");
  // Valid JSON without "answer", whose 4,096th byte splits a two-byte character.
  std::string long_text(4093 - 14, 'x');
  for (int i = 0; i < 50; ++i) long_text += "\xc3\xa9";
  rows.insert(rows.begin() + 7, "{\"question\":\"" + long_text + "\",\"options\":[\"a\"]}");
  rows.insert(rows.begin() + 9, std::string("\xff\xfe{not json\x01", 12));
  WriteRows(dir.File("rows.jsonl"), rows);
  ChildProcess run(CoralRun(dir, dir.File("rows.jsonl"), 0), dir.File("run.log"));
  const int rc = run.Wait(180000);
  const std::string log = Log(dir.File("run.log"));
  EXPECT_EQ(rc, 3) << log;  // every task written, some failed
  EXPECT_NE(log.find("3 tasks failed and 0 were lost"), std::string::npos) << log;
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), 33u);
  EXPECT_TRUE(dups.empty());
  int invalid = 0;
  for (const auto& r : records) {
    if (r["reason"] == "invalid_input") {
      ++invalid;
      EXPECT_EQ(r["status"], "failed");
      const std::string error = r["error"].get<std::string>();
      EXPECT_NE(error.find("rows.jsonl line "), std::string::npos) << error;
    } else {
      EXPECT_EQ(r["status"], "done") << r.dump();
    }
  }
  EXPECT_EQ(invalid, 3);
  // No worker restarted: nothing died.
  Json summary = Json::parse(*ReadFile(dir.File("out/summary.json")));
  EXPECT_EQ(summary["process_restarts"], 0);
}

TEST(FaultTest, ARowThatCrashesItsWorkerEveryTimeFailsAndTheOthersFinish) {
  TempDir dir;
  auto rows = SampleRows(40);
  rows[5] = "{\"question\":\"POISON-ROW-FOR-THE-CRASH-TEST\",\"options\":[\"a\",\"b\"],\"answer\":\"A\"}";
  WriteRows(dir.File("rows.jsonl"), rows);
  ::setenv("MATRIX_FAULT_ABORT_ON_INPUT", "POISON-ROW-FOR-THE-CRASH-TEST", 1);
  ChildProcess run(CoralRun(dir, dir.File("rows.jsonl"), 0), dir.File("run.log"));
  ::unsetenv("MATRIX_FAULT_ABORT_ON_INPUT");
  const int rc = run.Wait(240000);
  const std::string log = Log(dir.File("run.log"));
  EXPECT_EQ(rc, 3) << log;
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), 40u) << log;
  EXPECT_TRUE(dups.empty());
  for (const auto& r : records) {
    if (r["task_id"] == "r6.t0") {
      EXPECT_EQ(r["status"], "failed") << r.dump();
      EXPECT_EQ(r["reason"], "worker_crash") << r.dump();
    } else {
      EXPECT_EQ(r["status"], "done") << r.dump();
    }
  }
}

TEST(FaultTest, ConfigurationAWorkerWouldDieOfIsRefusedAtOnce) {
  TempDir dir;
  ::unsetenv("MATRIX_TEST_NO_SUCH_KEY");
  const std::vector<std::string> run{BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=5",
                                     "models.llama.api_key_env=MATRIX_TEST_NO_SUCH_KEY", "--output", dir.File("out"),
                                     "--quiet"};
  const auto t0 = std::chrono::steady_clock::now();
  ChildProcess unset(run, dir.File("unset.log"));
  EXPECT_EQ(unset.Wait(30000), 2);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  std::string log = Log(dir.File("unset.log"));
  EXPECT_NE(log.find("MATRIX_TEST_NO_SUCH_KEY is not set"), std::string::npos) << log;
  std::string out;
  EXPECT_EQ(RunCommand(BinPath("matrix") + " validate " + SourcePath("configs/coral.yaml") +
                           " models.llama.api_key_env=MATRIX_TEST_NO_SUCH_KEY 2>&1",
                       &out),
            1);
  EXPECT_NE(out.find("MATRIX_TEST_NO_SUCH_KEY"), std::string::npos) << out;

  // A key file others can read.
  ASSERT_TRUE(WriteFileAtomic(dir.File("key"), "sk-test\n", 0644).ok());
  ChildProcess open_file({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=5",
                          "models.llama.api_key_file=" + dir.File("key"), "--output", dir.File("out"), "--quiet"},
                         dir.File("file.log"));
  EXPECT_EQ(open_file.Wait(30000), 2);
  log = Log(dir.File("file.log"));
  EXPECT_NE(log.find("accessible by group or others"), std::string::npos) << log;
}

TEST(FaultTest, AKilledRunLeavesNoDaemonAndASecondRunOnItsOutputRefuses) {
  TempDir dir;
  auto first = std::make_unique<ChildProcess>(
      std::vector<std::string>{BinPath("matrix"), "run", SourcePath("configs/coral.yaml"), "dataset.limit=2000",
                               "run.max_concurrent_tasks=50", "--output", dir.File("out"), "--run-dir",
                               dir.File("run"), "--quiet"},
      dir.File("first.log"));
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) >= 5; }, 60000)) << Log(dir.File("first.log"));
  std::string out;
  EXPECT_EQ(RunCommand(BinPath("matrix") + " run " + SourcePath("configs/coral.yaml") + " --quiet --output " +
                           dir.File("out") + " 2>&1",
                       &out),
            2);
  EXPECT_NE(out.find("being written by another run"), std::string::npos) << out;
  // Every daemon of the first run names the output directory on its command line.
  const std::string daemons = "matrix-.*" + dir.File("out");
  ASSERT_GT(PidOf(daemons), 0);
  first->Signal(SIGKILL);
  EXPECT_EQ(first->Wait(10000), 128 + SIGKILL);
  EXPECT_TRUE(WaitUntil([&] { return PidOf("matrix-worker.*" + dir.File("out")) < 0; }, 5000));
  // Nor the store, broker or simulator (the run directory is on their command lines).
  std::string left;
  RunCommand("pgrep -af -- '[m]atrix-(store|broker|llm-sim|worker)' || true", &left);
  std::string mine;
  std::istringstream lines(left);
  for (std::string l; std::getline(lines, l);)
    if (l.find(dir.path()) != std::string::npos) mine += l + "\n";
  EXPECT_TRUE(mine.empty()) << mine;
  // Nothing half-written: every line is a record.
  EXPECT_NO_THROW(ReadRecords(dir.File("out")));
}

// A tmpfs of our own for the output, unmounted on every path.
class SmallDisk {
 public:
  explicit SmallDisk(const std::string& path) : path_(path) {
    mounted_ = MakeDirs(path_).ok() &&
               ::mount("tmpfs", path_.c_str(), "tmpfs", 0, "size=64k") == 0;
  }
  ~SmallDisk() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  bool Grow() { return ::mount("tmpfs", path_.c_str(), "tmpfs", MS_REMOUNT, "size=64m") == 0; }

 private:
  std::string path_;
  bool mounted_ = false;
};

TEST(FaultTest, AFullDiskPausesTheRunLoudlyAndItCompletesWhenSpaceReturns) {
  TempDir dir;
  SmallDisk disk(dir.File("out"));
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  const int kTasks = 200;
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"),
                    "dataset.limit=" + std::to_string(kTasks), "simulator.speed=4", "--output", dir.File("out"),
                    "--run-dir", dir.File("run"), "--progress-interval-s", "1"},
                   dir.File("run.log"));
  // The progress line says so within seconds of the first failed write.
  ASSERT_TRUE(WaitUntil([&] { return Log(dir.File("run.log")).find("OUTPUT BLOCKED") != std::string::npos; }, 90000))
      << Log(dir.File("run.log"));
  const int worker = PidOf("matrix-worker.*" + dir.File("run"));
  ASSERT_GT(worker, 0);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const double cpu0 = CpuSeconds(worker);
  std::this_thread::sleep_for(std::chrono::seconds(5));
  const double cpu = CpuSeconds(worker) - cpu0;
  // Tasks already admitted still finish their conversations, which costs
  // some CPU (more under ASan and a busy machine); a loop spinning on the
  // full disk would use all 5 s.
  EXPECT_LT(cpu, 2.5) << "the worker burned CPU while the disk was full";
  auto progress = ReadFile(dir.File("run/progress/worker-0.json"));
  ASSERT_TRUE(progress.ok());
  EXPECT_NE(progress->find("No space left on device"), std::string::npos) << *progress;
  ASSERT_TRUE(disk.Grow());
  const int rc = run.Wait(180000);
  EXPECT_EQ(rc, 0) << Log(dir.File("run.log"));
  auto records = ReadRecords(dir.File("out"));  // throws on a torn line
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), static_cast<size_t>(kTasks));
  EXPECT_TRUE(dups.empty());
  EXPECT_EQ(records.size(), static_cast<size_t>(kTasks));
}

// Every kind of bad message a peer can send, built from a real one.
std::vector<std::vector<std::string>> Garbage(std::mt19937& rng) {
  std::vector<std::vector<std::string>> out;
  wire::RegisterMsg reg{"w\xff", {{"te\xe9\x80", 8}}, 1, false, "n\xc0", 0};
  const std::string bad_register = wire::EncodeControl(wire::Control{"\xfe\xff", reg});
  out.push_back({bad_register});
  wire::SubmitMsg submit{{{0, "teacher", "r1.t0", false, true}}};
  const std::string good = wire::EncodeControl(wire::Control{"peer", submit});
  out.push_back({good});                                     // a payload announced, none sent
  out.push_back({good, "\x01\x00\x00\x00"});                  // a truncated payload bundle
  out.push_back({good, wire::PackPayloads({"not a task"})});  // a payload that is not a task
  out.push_back({});
  out.push_back({""});
  for (int i = 0; i < 40; ++i) {
    std::string bytes(rng() % 300, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    out.push_back({bytes});
    std::string flipped = i % 2 ? good : bad_register;
    flipped[rng() % flipped.size()] ^= static_cast<char>(1 << (rng() % 8));
    out.push_back({flipped});
    out.push_back({good.substr(0, rng() % good.size())});
  }
  return out;
}

TEST(FaultTest, MalformedMessagesToTheBrokerAndTheStoreAreCountedAndDropped) {
  TempDir dir;
  const int kTasks = 150;
  ChildProcess run({BinPath("matrix"), "run", SourcePath("configs/coral.yaml"),
                    "dataset.limit=" + std::to_string(kTasks), "simulator.speed=4", "--output", dir.File("out"),
                    "--run-dir", dir.File("run"), "--quiet"},
                   dir.File("run.log"));
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) >= 5; }, 60000)) << Log(dir.File("run.log"));
  std::mt19937 rng(7);
  transport::Context ctx;
  size_t sent = 0;
  std::vector<std::unique_ptr<transport::Socket>> peers;  // open until the run ends: nothing queued is dropped
  for (const char* name : {"broker", "store"}) {
    transport::SocketOptions opts;
    opts.identity = std::string("\x00\xff", 2) + name;
    auto peer = transport::Socket::Connect(ctx, transport::Socket::Kind::kDealer,
                                           "ipc://" + dir.File("run/" + std::string(name) + ".sock"), opts);
    ASSERT_TRUE(peer.ok()) << peer.status().message();
    for (int round = 0; round < 3; ++round)
      for (auto& frames : Garbage(rng)) {
        if (frames.empty()) continue;  // ZeroMQ sends no empty multipart message
        sent += (*peer)->Send(frames).ok();
      }
    peers.push_back(std::move(*peer));
  }
  EXPECT_GT(sent, 300u);
  EXPECT_EQ(run.Wait(180000), 0) << Log(dir.File("run.log"));
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(records, &dups).size(), static_cast<size_t>(kTasks));
  EXPECT_TRUE(dups.empty());
  for (const auto& r : records) EXPECT_EQ(r["status"], "done") << r.dump();
  Json summary = Json::parse(*ReadFile(dir.File("out/summary.json")));
  EXPECT_EQ(summary["process_restarts"], 0);
  EXPECT_GT(summary["broker"]["invalid_messages"].get<int64_t>(), 100) << summary.dump();
  EXPECT_GT(summary["store"]["malformed_messages"].get<int64_t>(), 100) << summary.dump();
  // The logs hold no raw bytes of the peers.
  for (const char* log : {"run/logs/broker.log", "run/logs/store.log"}) {
    const std::string text = Log(dir.File(log));
    EXPECT_EQ(text.find('\xff'), std::string::npos) << log;
    EXPECT_EQ(text.find(std::string(1, '\0')), std::string::npos) << log;
  }
}

}  // namespace
}  // namespace matrix::testing
