// Integration: `matrix export` on the records of a real Coral run: SFT
// conversations, RL steps and the stats breakdown checked field by field
// against the records they come from.
#include <fstream>
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/json.h"
#include "common/base/zstd_lines.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

std::vector<Json> ReadLines(const std::string& path) {
  std::vector<Json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(Json::parse(line));
  return out;
}

class ExportRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    std::string out;
    int rc = RunCommand(BinPath("matrix") + " run " + SourcePath("configs/coral.yaml") +
                            " dataset.limit=12 simulator.speed=20 models.llama.logprobs=true models.llama.top_logprobs=2"
                            " models.llama.token_ids=true --output " +
                            dir_->File("out") + " --quiet",
                        &out);
    ASSERT_EQ(rc, 0) << out;
    for (const auto& r : ReadRecords(dir_->File("out"))) records_[r["task_id"].get<std::string>()] = r;
    ASSERT_EQ(records_.size(), 12u);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // Runs `matrix export` into <dir>/<format>.jsonl; returns that path.
  static std::string Export(const std::string& format, const std::string& extra = "") {
    const std::string file = dir_->File(format + ".jsonl");
    std::string out;
    EXPECT_EQ(RunCommand(BinPath("matrix") + " export " + dir_->File("out") + " --format " + format + " --out " +
                             file + " " + extra,
                         &out),
              0)
        << out;
    EXPECT_NE(out.find("matrix export: 12 records"), std::string::npos) << out;
    return file;
  }

  static TempDir* dir_;
  static std::map<std::string, Json> records_;
};

TempDir* ExportRunTest::dir_ = nullptr;
std::map<std::string, Json> ExportRunTest::records_;

TEST_F(ExportRunTest, SftConversationsFollowTheRecordsTurns) {
  auto lines = ReadLines(Export("sft"));
  ASSERT_EQ(lines.size(), 24u);  // teacher and student for every task
  for (const auto& line : lines) {
    const Json& rec = records_.at(line["task_id"].get<std::string>());
    const std::string agent = line["agent"];
    ASSERT_TRUE(agent == "teacher" || agent == "student") << agent;
    EXPECT_EQ(line["status"], rec["status"]);
    EXPECT_EQ(line["reason"], rec["reason"]);
    const Json& m = line["messages"];
    // The opening is the question with its lettered options.
    EXPECT_EQ(m[0]["role"], "user");
    EXPECT_EQ(m[0]["content"].get<std::string>().rfind(rec["input"]["question"].get<std::string>(), 0), 0u);
    EXPECT_NE(m[0]["content"].get<std::string>().find("\nA. "), std::string::npos);
    // Then the conversation turns in order, up to the agent's last one.
    std::vector<Json> conversation;
    for (const auto& t : rec["turns"])
      if (t["conversation"] == true) conversation.push_back(t);
    size_t expected = 0;
    for (size_t i = 0; i < conversation.size(); ++i)
      if (conversation[i]["role"] == agent) expected = i + 1;
    ASSERT_EQ(m.size(), 1 + expected) << line.dump();
    for (size_t i = 0; i < expected; ++i) {
      EXPECT_EQ(m[1 + i]["content"], conversation[i]["content"]);
      EXPECT_EQ(m[1 + i]["role"], conversation[i]["role"] == agent ? "assistant" : "user");
    }
    EXPECT_EQ(m.back()["role"], "assistant");
  }
}

TEST_F(ExportRunTest, RlStepsCarryPromptResponseRewardAndUsage) {
  auto lines = ReadLines(Export("rl"));
  size_t llm_turns = 0;
  for (const auto& [id, rec] : records_)
    for (const auto& t : rec["turns"]) llm_turns += t["kind"] == "llm" ? 1 : 0;
  ASSERT_EQ(lines.size(), llm_turns);
  for (const auto& line : lines) {
    const Json& rec = records_.at(line["task_id"].get<std::string>());
    const Json& turn = rec["turns"][line["turn"].get<size_t>()];
    EXPECT_EQ(line["step"], turn["step"]);
    EXPECT_EQ(line["role"], turn["role"]);
    EXPECT_EQ(line["model"], "llama");
    EXPECT_EQ(line["response"], turn["content"]);
    EXPECT_EQ(line["finish_reason"], turn["finish_reason"]);
    EXPECT_EQ(line["usage"], turn["usage"]);
    EXPECT_EQ(line["endpoint"], turn["endpoint"]);
    EXPECT_EQ(line["reward"], rec["vars"]["correct"].get<bool>() ? 1 : 0);
    EXPECT_EQ(line["status"], rec["status"]);
    ASSERT_TRUE(line["prompt"].is_array());
    EXPECT_EQ(line["prompt"][0]["role"], "user");
    if (turn["conversation"] == true) {
      // Every earlier conversation turn is in the prompt.
      size_t earlier = 0;
      for (size_t i = 0; i < line["turn"].get<size_t>(); ++i) earlier += rec["turns"][i]["conversation"] == true;
      EXPECT_EQ(line["prompt"].size(), 1 + earlier);
    } else {
      EXPECT_EQ(line["prompt"].size(), 1u);
    }
  }
}

TEST_F(ExportRunTest, RlLinesCarryTokenIdsAndLogprobs) {
  auto lines = ReadLines(Export("rl"));
  ASSERT_FALSE(lines.empty());
  for (const auto& line : lines) {
    const int64_t completion = line["usage"]["completion_tokens"].get<int64_t>();
    ASSERT_TRUE(line.contains("logprobs")) << line.dump();
    ASSERT_EQ(static_cast<int64_t>(line["logprobs"].size()), completion) << line.dump();
    for (const auto& lp : line["logprobs"]) EXPECT_LE(lp.get<double>(), 0.0);
    ASSERT_EQ(static_cast<int64_t>(line["token_ids"].size()), completion);
    EXPECT_EQ(static_cast<int64_t>(line["prompt_token_ids"].size()), line["usage"]["prompt_tokens"].get<int64_t>());
    ASSERT_EQ(static_cast<int64_t>(line["top_logprobs"].size()), completion);
    EXPECT_EQ(line["top_logprobs"][0].size(), 2u);
  }
}

TEST_F(ExportRunTest, PipelineOpeningRendersTheRolesTemplates) {
  auto lines = ReadLines(Export("rl", "--pipeline " + SourcePath("configs/coral.yaml")));
  ASSERT_FALSE(lines.empty());
  for (const auto& line : lines) {
    const Json& p = line["prompt"];
    if (line["role"] == "extractor") {
      // Quotes the turn it read, which is the one just before it.
      const Json& rec = records_.at(line["task_id"].get<std::string>());
      const Json& read = rec["turns"][line["turn"].get<size_t>() - 1];
      ASSERT_EQ(p.size(), 1u);
      EXPECT_NE(p[0]["content"].get<std::string>().find(read["content"].get<std::string>()), std::string::npos);
    } else {
      ASSERT_GE(p.size(), 2u);
      EXPECT_EQ(p[0]["role"], "system");
      EXPECT_NE(p[0]["content"].get<std::string>().find(line["role"] == "teacher" ? "You are a teacher" : "You are a student"),
                std::string::npos);
      EXPECT_EQ(p[1]["role"], "user");
    }
  }
}

TEST_F(ExportRunTest, StatsAddUpToTheRecords) {
  auto text = ReadFile(Export("stats"));
  ASSERT_TRUE(text.ok());
  Json stats = Json::parse(*text);
  EXPECT_EQ(stats["records"], 12);
  int64_t prompt = 0, completion = 0, teacher_steps = 0;
  double e2e = 0;
  for (const auto& [id, rec] : records_) {
    prompt += rec["usage"]["prompt_tokens"].get<int64_t>();
    completion += rec["usage"]["completion_tokens"].get<int64_t>();
    e2e += rec["duration_s"].get<double>();
    for (const auto& s : rec["spans"]) teacher_steps += s["role"] == "teacher";
  }
  EXPECT_EQ(stats["tokens_by_model"]["llama"]["prompt_tokens"], prompt);
  EXPECT_EQ(stats["tokens_by_model"]["llama"]["completion_tokens"], completion);
  EXPECT_NEAR(stats["end_to_end_s"]["total"].get<double>(), e2e, 1e-6);
  EXPECT_EQ(stats["roles"]["teacher"]["steps"], teacher_steps);
  double shares = 0;
  for (const auto& [role, r] : stats["roles"].items()) {
    EXPECT_GE(r["share_of_end_to_end"].get<double>(), 0.0) << role;
    shares += r["share_of_end_to_end"].get<double>();
  }
  EXPECT_GT(shares, 0.0);
  EXPECT_LE(shares, 1.05);  // steps of one task run one after another
  int64_t role_prompt = 0;
  for (const auto& [role, by_model] : stats["tokens_by_role"].items()) role_prompt += by_model["llama"]["prompt_tokens"].get<int64_t>();
  EXPECT_EQ(role_prompt, prompt);
}

// run.output_compression=zstd: p0.jsonl.zst, one frame per record, is read by
// the zstd CLI, `matrix export`, the run summary and a resumed run; a run
// writing the other format into the same output is refused before it starts.
TEST(ZstdOutputTest, CompressedRecordsExportAndResumeWithoutDuplicates) {
  TempDir dir;
  const std::string matrix = BinPath("matrix");
  auto run = [&](int limit, const std::string& compression) {
    return matrix + " run " + SourcePath("configs/coral.yaml") + " dataset.limit=" + std::to_string(limit) +
           " run.output_compression=" + compression + " simulator.speed=20 --output " + dir.File("out") + " --quiet";
  };
  std::string out;
  ASSERT_EQ(RunCommand(run(30, "zstd"), &out), 0) << out;
  const std::string path = dir.File("out/p0.jsonl.zst");
  ASSERT_TRUE(FileExists(path));
  EXPECT_FALSE(FileExists(dir.File("out/p0.jsonl")));
  std::string decoded;
  if (RunCommand("command -v zstd") == 0) {
    ASSERT_EQ(RunCommand("zstd -dc " + path, &decoded), 0) << decoded;
  } else {
    decoded = *ReadLinesFile(path);
  }
  std::set<std::string> ids;
  for (size_t pos = 0, nl; (nl = decoded.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    auto rec = ParseJson(decoded.substr(pos, nl - pos), "record");
    ASSERT_TRUE(rec.ok()) << rec.status().ToString();
    ids.insert((*rec)["task_id"].get<std::string>());
  }
  EXPECT_EQ(ids.size(), 30u);
  EXPECT_EQ(std::count(decoded.begin(), decoded.end(), '\n'), 30);
  EXPECT_EQ(ReadRecords(dir.File("out")).size(), 30u);
  EXPECT_EQ(Json::parse(*ReadFile(dir.File("out/summary.json")))["records"], 30);

  ASSERT_EQ(RunCommand(matrix + " export " + dir.File("out") + " --format sft --out " + dir.File("sft.jsonl"), &out), 0)
      << out;
  EXPECT_NE(out.find("matrix export: 30 records"), std::string::npos) << out;
  EXPECT_GE(ReadLines(dir.File("sft.jsonl")).size(), 30u);

  // Resume: the same run writes nothing; more rows append frames.
  const std::string before = *ReadFile(path);
  ASSERT_EQ(RunCommand(run(30, "zstd"), &out), 0) << out;
  EXPECT_EQ(*ReadFile(path), before);
  Json summary = Json::parse(*ReadFile(dir.File("out/summary.json")));
  EXPECT_EQ(summary["resumed_from_earlier_runs"], 30);
  EXPECT_EQ(summary["written_this_run"], 0);
  ASSERT_EQ(RunCommand(run(40, "zstd"), &out), 0) << out;
  std::vector<std::string> dups;
  EXPECT_EQ(TaskIds(ReadRecords(dir.File("out")), &dups).size(), 40u);
  EXPECT_TRUE(dups.empty());
  EXPECT_EQ(ReadFile(path)->compare(0, before.size(), before), 0) << "appended, not rewritten";

  // One partition, one file: plain records are not added beside them.
  EXPECT_EQ(RunCommand(run(40, "none"), &out), 2) << out;
  EXPECT_NE(out.find("run.output_compression"), std::string::npos) << out;
  EXPECT_FALSE(FileExists(dir.File("out/p0.jsonl")));
  EXPECT_EQ(RunCommand(matrix + " validate " + SourcePath("configs/coral.yaml") + " run.output_compression=gzip", &out),
            1);
  EXPECT_NE(out.find("run.output_compression"), std::string::npos) << out;
}

}  // namespace
}  // namespace matrix::testing
