// Integration: `matrix run` with real processes (store, broker, workers,
// simulator) over ZeroMQ ipc and real HTTP.
#include <signal.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <map>

#include "common/base/files.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

std::string Matrix() { return BinPath("matrix"); }
std::string Coral() { return SourcePath("configs/coral.yaml"); }

// Speeds the simulator up so tests take seconds.
const char* kFastSim[] = {"simulator.speed=20"};

TEST(CoralRunTest, EndToEndWritesOneRecordPerTaskWithEveryField) {
  TempDir dir;
  std::string out;
  std::string cmd = Matrix() + " run " + Coral() + " dataset.limit=60 run.max_concurrent_tasks=30 " + kFastSim[0] +
                    " --output " + dir.File("out") + " --quiet";
  int rc = RunCommand(cmd, &out);
  ASSERT_EQ(rc, 0) << out;
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(records.size(), 60u);
  EXPECT_EQ(ids.size(), 60u);
  EXPECT_TRUE(dups.empty());
  int agreed = 0;
  for (const auto& r : records) {
    ASSERT_EQ(r["status"], "done") << r.dump();
    ASSERT_TRUE(r["reason"] == "agreement" || r["reason"] == "max_turns") << r["reason"];
    ASSERT_TRUE(r["input"].contains("question"));
    ASSERT_GE(r["turns"].size(), 4u);
    const auto& first = r["turns"][0];
    EXPECT_EQ(first["role"], "teacher");
    EXPECT_TRUE(first["content"].is_string());
    EXPECT_GT(first["content"].get<std::string>().size(), 0u);
    EXPECT_GT(first["usage"]["completion_tokens"].get<int>(), 0);
    EXPECT_FALSE(first["finish_reason"].get<std::string>().empty());
    EXPECT_NE(first["endpoint"].get<std::string>().find("http://127.0.0.1:"), std::string::npos);
    EXPECT_GT(first["end_us"].get<int64_t>(), first["start_us"].get<int64_t>());
    EXPECT_TRUE(r["vars"].contains("teacher_answer"));
    EXPECT_TRUE(r["vars"].contains("student_answer"));
    EXPECT_TRUE(r["vars"].contains("agreement"));
    EXPECT_TRUE(r["vars"].contains("correct"));
    EXPECT_FALSE(r["spans"].empty());
    if (r["vars"]["agreement"] == true) ++agreed;
  }
  EXPECT_GT(agreed, 30);  // the simulator agrees with the previous speaker 60% of the time
  auto summary = ReadFile(dir.File("out/summary.json"));
  ASSERT_TRUE(summary.ok());
  Json s = Json::parse(*summary);
  EXPECT_EQ(s["records"], 60);
  EXPECT_GT(s["total_tokens"].get<int64_t>(), 0);
  EXPECT_TRUE(s["rates"].contains("agreement"));
  EXPECT_FALSE(s.contains("cost")) << "no price, no cost";
}

// Local steps (extract, compare, noop) run in place on the worker that ran
// the step before: the same records, spans and variables as when every step
// goes through the broker, with far fewer hops. A request's seed is its
// step's number, not its hop's, so both runs hold the same conversations.
TEST(CoralRunTest, StepsInPlaceGiveTheSameRecordsWithFewerHops) {
  TempDir dir;
  std::map<std::string, Json> by_mode[2];
  int64_t messages[2] = {0, 0};
  for (int in_place = 0; in_place < 2; ++in_place) {
    const std::string out = dir.File(in_place ? "in-place" : "hops");
    std::string log;
    ASSERT_EQ(RunCommand(Matrix() + " run " + Coral() + " dataset.limit=40 run.max_concurrent_tasks=20 " + kFastSim[0] +
                             " run.max_steps_in_place=" + (in_place ? "8" : "0") + " --output " + out +
                             " --quiet",
                         &log),
              0)
        << log;
    for (auto& r : ReadRecords(out)) by_mode[in_place][r["task_id"].get<std::string>()] = r;
    auto summary = ReadFile(out + "/summary.json");
    ASSERT_TRUE(summary.ok());
    messages[in_place] = Json::parse(*summary)["broker"]["messages"].get<int64_t>();
  }
  ASSERT_EQ(by_mode[0].size(), 40u);
  ASSERT_EQ(by_mode[1].size(), 40u);
  for (const auto& [id, hop] : by_mode[0]) {
    ASSERT_TRUE(by_mode[1].count(id)) << id;
    const Json& local = by_mode[1].at(id);
    EXPECT_EQ(local["status"], "done") << local.dump();
    EXPECT_EQ(local["status"], hop["status"]) << id;
    EXPECT_EQ(local["reason"], hop["reason"]) << id;
    EXPECT_EQ(local["vars"], hop["vars"]) << id;
    EXPECT_EQ(local["counters"], hop["counters"]) << id;
    EXPECT_EQ(local["turns"].size(), hop["turns"].size()) << id;
    // One span per step either way; a step run in place waited in no queue.
    const int64_t steps = local["counters"]["steps"].get<int64_t>();
    ASSERT_EQ(static_cast<int64_t>(local["spans"].size()), steps) << id;
    ASSERT_EQ(static_cast<int64_t>(hop["spans"].size()), steps) << id;
    // A step run in place waited in no queue; one after a hop did.
    int64_t queued = 0;
    for (const auto& sp : local["spans"]) queued += sp["enqueue_us"] != sp["start_us"];
    EXPECT_EQ(queued, local["hops"].get<int64_t>()) << id;
    // Every step a hop (and admission and the sink), or one hop per 9 steps:
    // admission, the sink and 8 steps after each delivery run in place.
    EXPECT_EQ(hop["hops"].get<int64_t>(), steps + 1) << id;
    EXPECT_EQ(local["hops"].get<int64_t>(), steps / 9) << id;
  }
  EXPECT_LT(messages[1] * 5, messages[0]) << messages[1] << " broker messages in place, " << messages[0];
}

TEST(CoralRunTest, TwoWorkersShareTheTasksWhileStepsRunInPlace) {
  // The first step goes through the broker, which spreads the admitted tasks
  // over the workers it knows; each task then runs its steps where it landed.
  // The first burst may all go to the worker that registered first (at this
  // size they start a few ms apart); the tasks admitted as others end are
  // shared.
  TempDir dir;
  std::string log;
  ASSERT_EQ(RunCommand(Matrix() + " run " + Coral() + " dataset.limit=200 run.max_concurrent_tasks=40 " + kFastSim[0] +
                           " --workers 2 --output " + dir.File("out") + " --quiet",
                       &log),
            0)
      << log;
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 200u);
  std::map<std::string, int> tasks_by_worker;  // of each task's first step
  for (const auto& r : records) {
    EXPECT_EQ(r["status"], "done") << r.dump();
    ASSERT_FALSE(r["spans"].empty());
    const std::string worker = r["spans"][0]["worker"].get<std::string>();
    tasks_by_worker[worker.substr(0, worker.find('.'))]++;
  }
  ASSERT_EQ(tasks_by_worker.size(), 2u) << log;
  EXPECT_GE(tasks_by_worker["worker-0"], 40);
  EXPECT_GE(tasks_by_worker["worker-1"], 40);
}

TEST(CoralRunTest, PricedModelReportsCostInSummaryAndStatus) {
  TempDir dir;
  std::string out;
  std::string cmd = Matrix() + " run " + Coral() + " dataset.limit=40 run.max_concurrent_tasks=20 " + kFastSim[0] +
                    " models.llama.price.input_per_million=0.1 models.llama.price.output_per_million=0.2 --output " +
                    dir.File("out") + " --run-dir " + dir.File("run");
  ASSERT_EQ(RunCommand(cmd, &out), 0) << out;
  auto text = ReadFile(dir.File("out/summary.json"));
  ASSERT_TRUE(text.ok());
  Json s = Json::parse(*text);
  ASSERT_EQ(s["records"], 40);
  ASSERT_TRUE(s.contains("cost")) << s.dump(2);
  const Json& cost = s["cost"];
  const int64_t prompt = s["prompt_tokens"].get<int64_t>(), completion = s["completion_tokens"].get<int64_t>();
  ASSERT_GT(prompt, 0);
  const double expected = (prompt * 0.1 + completion * 0.2) / 1e6;
  EXPECT_EQ(cost["currency"], "USD");
  EXPECT_EQ(cost["by_model"]["llama"]["prompt_tokens"], prompt);
  EXPECT_EQ(cost["by_model"]["llama"]["completion_tokens"], completion);
  EXPECT_NEAR(cost["by_model"]["llama"]["cost"].get<double>(), expected, expected * 1e-9);
  EXPECT_NEAR(cost["total"].get<double>(), expected, expected * 1e-9);
  // The workers spent at least the records' tokens (more when an attempt was retried).
  EXPECT_GE(cost["this_run"].get<double>(), expected * (1 - 1e-9)) << cost.dump();
  EXPECT_NE(out.find("  cost:         $"), std::string::npos) << out;

  // matrix status reads the prices from the workers' progress files.
  std::string status;
  RunCommand(Matrix() + " status " + dir.File("run"), &status);
  EXPECT_NE(status.find("40/40 tasks"), std::string::npos) << status;
  EXPECT_NE(status.find(" so far, ~$"), std::string::npos) << status;
  EXPECT_NE(status.find("cost by model: llama $"), std::string::npos) << status;
  // The workers' tokens by model: here, with no attempt retried, those of the records.
  const std::string tokens =
      "(" + std::to_string(prompt) + " prompt + " + std::to_string(completion) + " completion tokens)";
  EXPECT_NE(status.find(tokens), std::string::npos) << status;
}

TEST(CoralRunTest, MalformedRowsBecomeFailedRecordsNamingTheLine) {
  TempDir dir;
  std::string out;
  std::string cmd = Matrix() + " run " + Coral() + " dataset.path=" + SourcePath("test/data/bad_rows.jsonl") + " " +
                    kFastSim[0] + " --output " + dir.File("out") + " --quiet";
  RunCommand(cmd, &out);
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 10u) << out;
  std::map<int, Json> by_row;
  for (const auto& r : records) by_row[r["row"].get<int>()] = r;
  for (int bad : {4, 7, 8}) {
    ASSERT_EQ(by_row[bad]["status"], "failed") << bad;
    EXPECT_EQ(by_row[bad]["reason"], "invalid_input");
    EXPECT_NE(by_row[bad]["error"].get<std::string>().find("line " + std::to_string(bad)), std::string::npos)
        << by_row[bad]["error"];
  }
  for (int good : {1, 2, 3, 5, 6, 9, 10}) EXPECT_EQ(by_row[good]["status"], "done") << good;
}

Json RunSummary(const std::string& out_dir, const std::string& extra) {
  std::string out;
  std::string cmd = Matrix() + " run " + Coral() + " " + kFastSim[0] + " " + extra + " --output " + out_dir +
                    " --quiet --workers 2";
  EXPECT_EQ(RunCommand(cmd, &out), 0) << out;
  auto text = ReadFile(out_dir + "/summary.json");
  return text.ok() ? Json::parse(*text) : Json::object();
}

TEST(CoralRunTest, LongTurnsAreOffloadedAndHopSizeDoesNotGrowWithTurns) {
  TempDir dir;
  // Short conversations (always agree at once) against 20-turn ones (never
  // agree), every step a hop.
  Json short_run = RunSummary(dir.File("short"), "dataset.limit=40 simulator.agree_prob=1.0 run.max_steps_in_place=0");
  Json long_run = RunSummary(dir.File("long"), "dataset.limit=40 simulator.agree_prob=0.0 run.max_steps_in_place=0");
  ASSERT_EQ(short_run["records"], 40);
  ASSERT_EQ(long_run["records"], 40);
  EXPECT_EQ(long_run["by_reason"]["max_turns"], 40);
  EXPECT_GE(long_run["mean_turns"].get<double>(), 20.0);
  // Long turns went to the store and came back from it.
  ASSERT_TRUE(long_run.contains("store")) << long_run.dump();
  EXPECT_GT(long_run["store"]["puts"].get<int64_t>(), 100);
  EXPECT_GT(long_run["store"]["gets"].get<int64_t>(), 0);
  // The records hold the full text again.
  size_t long_turns = 0;
  for (const auto& r : ReadRecords(dir.File("long")))
    for (const auto& t : r["turns"])
      if (t["content"].is_string() && t["content"].get<std::string>().size() > 512) ++long_turns;
  EXPECT_GT(long_turns, 0u);
  // Ten times the turns, about the same bytes per hop through the broker.
  double short_bytes = short_run["broker"]["mean_bytes_per_hop"].get<double>();
  double long_bytes = long_run["broker"]["mean_bytes_per_hop"].get<double>();
  EXPECT_GT(short_bytes, 0);
  EXPECT_LT(long_bytes, short_bytes * 1.6) << "short " << short_bytes << " long " << long_bytes;
}

TEST(CoralRunTest, SurvivesKillOfTheWorkerMidRun) {
  TempDir dir;
  ChildProcess run({Matrix(), "run", Coral(), "dataset.limit=300", "run.max_concurrent_tasks=100",
                    "simulator.speed=5", "--output", dir.File("out"), "--quiet"},
                   dir.File("run.log"));
  // Wait until some records exist, then kill -9 the worker.
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto recs = ReadFile(dir.File("out/p0.jsonl"));
        return recs.ok() && std::count(recs->begin(), recs->end(), '\n') >= 30;
      },
      60000));
  std::string pid_text;
  ASSERT_EQ(RunCommand("pgrep -f 'matrix-worker.*" + dir.path() + "' | head -1", &pid_text), 0);
  int pid = std::stoi(pid_text);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int rc = run.Wait(180000);
  auto log = ReadFile(dir.File("run.log"));
  ASSERT_EQ(rc, 0) << (log.ok() ? *log : "");
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  auto ids = TaskIds(records, &dups);
  EXPECT_EQ(records.size(), 300u);
  EXPECT_EQ(ids.size(), 300u);
  EXPECT_TRUE(dups.empty()) << dups.size() << " duplicates";
  for (const auto& r : records) EXPECT_FALSE(r["reason"].get<std::string>().empty());
}

TEST(CoralRunTest, RerunResumesWithoutDuplicates) {
  TempDir dir;
  std::string out;
  std::string base = Matrix() + " run " + Coral() + " " + kFastSim[0] + " --output " + dir.File("out") + " --quiet";
  ASSERT_EQ(RunCommand(base + " dataset.limit=20", &out), 0) << out;
  ASSERT_EQ(RunCommand(base + " dataset.limit=40", &out), 0) << out;
  auto records = ReadRecords(dir.File("out"));
  std::vector<std::string> dups;
  TaskIds(records, &dups);
  EXPECT_EQ(records.size(), 40u);
  EXPECT_TRUE(dups.empty());
  Json s = Json::parse(*ReadFile(dir.File("out/summary.json")));
  EXPECT_EQ(s["resumed_from_earlier_runs"], 20);
}

// run.schedule: batch admits a batch, waits for all of it, then the next:
// every task of a batch is created after the last one of the batch before
// finished. The default (row) refills a slot as soon as a task finishes.
TEST(CoralRunTest, BatchScheduleWaitsForTheWholeBatch) {
  TempDir dir;
  std::string out;
  const std::string cmd = Matrix() + " run " + Coral() + " " + kFastSim[0] +
                          " dataset.limit=60 run.max_concurrent_tasks=20 run.schedule=batch --output " +
                          dir.File("out") + " --quiet";
  ASSERT_EQ(RunCommand(cmd, &out), 0) << out;
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 60u);
  std::sort(records.begin(), records.end(), [](const Json& a, const Json& b) {
    return a["created_us"].get<int64_t>() < b["created_us"].get<int64_t>();
  });
  for (size_t batch = 1; batch < 3; ++batch) {
    int64_t last_end = 0, first_start = INT64_MAX;
    for (size_t i = (batch - 1) * 20; i < batch * 20; ++i) last_end = std::max(last_end, records[i]["finished_us"].get<int64_t>());
    for (size_t i = batch * 20; i < (batch + 1) * 20; ++i)
      first_start = std::min(first_start, records[i]["created_us"].get<int64_t>());
    EXPECT_GE(first_start, last_end) << "batch " << batch + 1 << " started before batch " << batch << " finished";
  }
  std::string bad;
  EXPECT_EQ(RunCommand(Matrix() + " validate " + Coral() + " run.schedule=sometimes 2>&1", &bad), 1);
  EXPECT_NE(bad.find("run.schedule"), std::string::npos) << bad;
}

TEST(CoralRunTest, TemplateWithMissingFieldFailsEachTaskWithAClearError) {
  TempDir dir;
  std::string out;
  std::string cmd = Matrix() + " run " + Coral() + " dataset.limit=5 " + kFastSim[0] +
                    " 'roles.student.prompt=\"{{ input.hint }}\"' --output " + dir.File("out") + " --quiet";
  RunCommand(cmd, &out);
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 5u) << out;
  for (const auto& r : records) {
    EXPECT_EQ(r["status"], "failed");
    EXPECT_EQ(r["reason"], "prompt_error");
    const std::string error = r["error"].get<std::string>();
    EXPECT_NE(error.find("input.hint"), std::string::npos) << error;
    EXPECT_NE(error.find("student"), std::string::npos) << error;
    EXPECT_EQ(r["turns"].size(), 2u);  // the teacher's turn and its extraction ran
  }
}

TEST(CoralRunTest, ValidateNamesFileLineAndKey) {
  TempDir dir;
  std::string bad = dir.File("bad.yaml");
  ASSERT_TRUE(WriteFileAtomic(bad,
                              "defaults: [" + Coral() + "]\n"
                              "roles:\n"
                              "  teacher:\n"
                              "    type: llm\n"
                              "    modle: llama\n")
                  .ok());
  std::string out;
  EXPECT_NE(RunCommand(Matrix() + " validate " + bad, &out), 0);
  EXPECT_NE(out.find("bad.yaml:5"), std::string::npos) << out;
  EXPECT_NE(out.find("modle"), std::string::npos) << out;
  EXPECT_EQ(RunCommand(Matrix() + " validate " + Coral(), &out), 0) << out;
}

}  // namespace
}  // namespace matrix::testing
