// Unit: `matrix export` on records written by the test: SFT conversations per
// agent, RL steps with their prompts, rewards and token data, the stats
// breakdown, the opening rendered from the pipeline's templates, and errors.
#include "daemons/cli/export_command.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/json.h"
#include "common/base/zstd_lines.h"
#include "test/support/test_util.h"

namespace matrix::cli {
namespace {

Json Turn(const std::string& step, const std::string& role, const std::string& content, bool conversation,
          int64_t prompt, int64_t completion) {
  return {{"step", step},
          {"role", role},
          {"kind", "llm"},
          {"conversation", conversation},
          {"content", content},
          {"finish_reason", "stop"},
          {"usage", {{"prompt_tokens", prompt}, {"completion_tokens", completion}}},
          {"endpoint", "http://127.0.0.1:1/v1"},
          {"model", "llama"},
          {"start_us", 0},
          {"end_us", 1},
          {"attempts", 1}};
}

Json Span(const std::string& role, double wait_s, double handling_s) {
  return {{"step", role}, {"role", role}, {"queue_wait_s", wait_s}, {"handling_s", handling_s}};
}

// teacher, extractor, student, extractor, teacher, extractor, student, extractor.
Json CoralRecord(const std::string& id, bool correct) {
  Json turns = Json::array();
  const char* speakers[] = {"teacher", "student", "teacher", "student"};
  for (int i = 0; i < 4; ++i) {
    std::string who = speakers[i];
    turns.push_back(Turn(who, who, who + " turn " + std::to_string(i), true, 100 + i, 10 + i));
    turns.push_back(Turn("extract_" + who, "extractor", "The answer is (B)", false, 50, 5));
  }
  turns[0]["extra"] = {{"token_ids", {1, 2, 3}}, {"logprobs", {-0.1, -0.2, -0.3}}};
  Json spans = Json::array({Span("teacher", 0.5, 2.0), Span("extractor", 0.0, 1.0), Span("student", 0.5, 2.0),
                            Span("parse_teacher", 0.0, 0.0)});
  return {{"task_id", id},
          {"row", 1},
          {"trial", 0},
          {"status", "done"},
          {"reason", "agreement"},
          {"input", {{"question", "What is 1+1?"}, {"options", {"1", "2", "3"}}, {"answer", "B"}}},
          {"vars", {{"correct", correct}, {"agreement", true}}},
          {"counters", {{"turns", 4}}},
          {"turns", turns},
          {"spans", spans},
          {"duration_s", 10.0}};
}

class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string lines = CoralRecord("r1.t0", true).dump() + "\n" + CoralRecord("r2.t0", false).dump() + "\n";
    Json failed = {{"task_id", "r3.t0"}, {"status", "failed"}, {"reason", "invalid_input"}, {"input", "x"},
                   {"turns", Json::array()}, {"duration_s", 0.0}};
    lines += failed.dump() + "\n";
    ASSERT_TRUE(WriteFileAtomic(dir_.File("p0.jsonl"), lines).ok());
  }

  std::vector<Json> Export(const std::string& format, const std::string& pipeline = "",
                           ExportCounts* counts = nullptr) {
    ExportOptions opt;
    opt.output_dir = dir_.path();
    opt.format = format;
    opt.pipeline_path = pipeline;
    std::ostringstream out;
    auto result = ExportRun(opt, out);
    EXPECT_TRUE(result.ok()) << result.status().ToString();
    if (counts && result.ok()) *counts = *result;
    std::vector<Json> parsed;
    if (format == "stats") {
      parsed.push_back(Json::parse(out.str()));
      return parsed;
    }
    std::istringstream in(out.str());
    std::string line;
    while (std::getline(in, line)) parsed.push_back(Json::parse(line));
    return parsed;
  }

  testing::TempDir dir_;
};

TEST_F(ExportTest, SftHasOneConversationPerAgentAsThatAgentSawIt) {
  ExportCounts counts;
  auto lines = Export("sft", "", &counts);
  EXPECT_EQ(counts.records, 3);
  EXPECT_EQ(counts.skipped, 1);
  ASSERT_EQ(lines.size(), 4u);  // (teacher, student) x 2 tasks; the extractor is not a conversation agent
  const Json& teacher = lines[0];
  EXPECT_EQ(teacher["task_id"], "r1.t0");
  EXPECT_EQ(teacher["agent"], "teacher");
  EXPECT_EQ(teacher["status"], "done");
  const Json& m = teacher["messages"];
  ASSERT_EQ(m.size(), 4u) << m.dump();  // opening, teacher, student, teacher; the last student turn is not answered
  EXPECT_EQ(m[0]["role"], "user");
  EXPECT_EQ(m[0]["content"], "What is 1+1?\nA. 1\nB. 2\nC. 3\n");
  EXPECT_EQ(m[1], (Json{{"role", "assistant"}, {"content", "teacher turn 0"}}));
  EXPECT_EQ(m[2], (Json{{"role", "user"}, {"content", "student turn 1"}}));
  EXPECT_EQ(m[3], (Json{{"role", "assistant"}, {"content", "teacher turn 2"}}));

  const Json& student = lines[1];
  EXPECT_EQ(student["agent"], "student");
  const Json& s = student["messages"];
  ASSERT_EQ(s.size(), 5u) << s.dump();
  EXPECT_EQ(s[1], (Json{{"role", "user"}, {"content", "teacher turn 0"}}));
  EXPECT_EQ(s[2], (Json{{"role", "assistant"}, {"content", "student turn 1"}}));
  EXPECT_EQ(s[4], (Json{{"role", "assistant"}, {"content", "student turn 3"}}));
  EXPECT_EQ(lines[2]["task_id"], "r2.t0");
}

TEST_F(ExportTest, RlHasOneLinePerLlmCallWithPromptRewardAndTokenData) {
  auto lines = Export("rl");
  ASSERT_EQ(lines.size(), 16u);  // 8 LLM calls x 2 tasks
  const Json& first = lines[0];
  EXPECT_EQ(first["task_id"], "r1.t0");
  EXPECT_EQ(first["step"], "teacher");
  EXPECT_EQ(first["turn"], 0);
  EXPECT_EQ(first["role"], "teacher");
  EXPECT_EQ(first["model"], "llama");
  ASSERT_EQ(first["prompt"].size(), 1u);
  EXPECT_EQ(first["prompt"][0]["role"], "user");
  EXPECT_EQ(first["response"], "teacher turn 0");
  EXPECT_EQ(first["finish_reason"], "stop");
  EXPECT_EQ(first["usage"], (Json{{"prompt_tokens", 100}, {"completion_tokens", 10}}));
  EXPECT_EQ(first["reward"], 1);
  EXPECT_EQ(first["status"], "done");
  EXPECT_EQ(first["reason"], "agreement");
  EXPECT_EQ(first["token_ids"], Json::array({1, 2, 3}));
  EXPECT_EQ(first["logprobs"].size(), 3u);

  // The student's second turn (turn 6) saw the opening and three conversation turns.
  const Json& student = lines[6];
  EXPECT_EQ(student["turn"], 6);
  EXPECT_EQ(student["role"], "student");
  const Json& p = student["prompt"];
  ASSERT_EQ(p.size(), 4u) << p.dump();
  EXPECT_EQ(p[1], (Json{{"role", "user"}, {"content", "teacher turn 0"}}));
  EXPECT_EQ(p[2], (Json{{"role", "assistant"}, {"content", "student turn 1"}}));
  EXPECT_EQ(p[3], (Json{{"role", "user"}, {"content", "teacher turn 2"}}));
  EXPECT_FALSE(student.contains("token_ids"));

  // Helper calls outside the conversation carry only their own opening.
  EXPECT_EQ(lines[1]["role"], "extractor");
  EXPECT_EQ(lines[1]["prompt"].size(), 1u);
  EXPECT_EQ(lines[8]["task_id"], "r2.t0");
  EXPECT_EQ(lines[8]["reward"], 0);
}

TEST_F(ExportTest, StatsSplitEndToEndTimeAndTokensByRoleAndModel) {
  Json stats = Export("stats")[0];
  EXPECT_EQ(stats["records"], 3);
  EXPECT_EQ(stats["by_status"], (Json{{"done", 2}, {"failed", 1}}));
  EXPECT_DOUBLE_EQ(stats["end_to_end_s"]["total"].get<double>(), 20.0);
  const Json& teacher = stats["roles"]["teacher"];
  EXPECT_EQ(teacher["steps"], 2);
  EXPECT_DOUBLE_EQ(teacher["handling_s"].get<double>(), 4.0);
  EXPECT_DOUBLE_EQ(teacher["share_of_end_to_end"].get<double>(), 0.2);
  EXPECT_DOUBLE_EQ(teacher["queue_share_of_end_to_end"].get<double>(), 0.05);
  EXPECT_DOUBLE_EQ(stats["roles"]["extractor"]["share_of_end_to_end"].get<double>(), 0.1);
  const Json& tokens = stats["tokens_by_role"]["teacher"]["llama"];
  EXPECT_EQ(tokens["calls"], 4);
  EXPECT_EQ(tokens["prompt_tokens"], 2 * (100 + 102));
  EXPECT_EQ(tokens["completion_tokens"], 2 * (10 + 12));
  EXPECT_EQ(stats["tokens_by_role"]["extractor"]["llama"]["calls"], 8);
  EXPECT_EQ(stats["tokens_by_model"]["llama"]["calls"], 16);
}

TEST_F(ExportTest, PipelineTemplatesGiveTheOpeningTheModelSaw) {
  auto lines = Export("sft", testing::SourcePath("configs/coral.yaml"));
  ASSERT_EQ(lines.size(), 4u);
  const Json& m = lines[0]["messages"];
  ASSERT_GE(m.size(), 3u);
  EXPECT_EQ(m[0]["role"], "system");
  EXPECT_NE(m[0]["content"].get<std::string>().find("You are a teacher"), std::string::npos) << m[0];
  EXPECT_EQ(m[1]["role"], "user");
  EXPECT_NE(m[1]["content"].get<std::string>().find("What is 1+1?"), std::string::npos) << m[1];
  EXPECT_NE(m[1]["content"].get<std::string>().find("B. 2"), std::string::npos) << m[1];
  EXPECT_EQ(m[2]["role"], "assistant");

  // The extractor's prompt quotes the turn it read.
  auto rl = Export("rl", testing::SourcePath("configs/coral.yaml"));
  const Json& extractor = rl[1]["prompt"];
  ASSERT_EQ(extractor.size(), 1u) << extractor.dump();
  EXPECT_NE(extractor[0]["content"].get<std::string>().find("teacher turn 0"), std::string::npos) << extractor;
}

TEST_F(ExportTest, Errors) {
  ExportOptions opt;
  opt.output_dir = dir_.path();
  opt.format = "csv";
  std::ostringstream out;
  EXPECT_EQ(ExportRun(opt, out).status().code(), StatusCode::kInvalidArgument);
  opt.format = "sft";
  opt.output_dir = dir_.File("nothing");
  EXPECT_EQ(ExportRun(opt, out).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(dir_.File("p1.jsonl"), "{\"task_id\": \"x\"}\nnot json\n").ok());
  opt.output_dir = dir_.path();
  auto bad = ExportRun(opt, out);
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("p1.jsonl line 2"), std::string::npos) << bad.status().message();
}

TEST_F(ExportTest, CommandWritesTheFileWhole) {
  ExportOptions opt;
  opt.output_dir = dir_.path();
  opt.format = "rl";
  opt.out_path = dir_.File("rl.jsonl");
  EXPECT_EQ(ExportCommand(opt), 0);
  auto text = ReadFile(opt.out_path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(std::count(text->begin(), text->end(), '\n'), 16);
  EXPECT_FALSE(FileExists(opt.out_path + ".partial"));
  opt.format = "nope";
  EXPECT_EQ(ExportCommand(opt), 2);
}

TEST_F(ExportTest, ReadsZstdRecordFilesInPartitionOrder) {
  ExportCounts plain;
  const auto expected = Export("sft", "", &plain);
  // p0 compressed, one frame per record, then a damaged p1.jsonl.zst.
  const std::string text = *ReadFile(dir_.File("p0.jsonl"));
  std::string frames, frame;
  ZstdFrameWriter zstd;
  for (size_t pos = 0, nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    ASSERT_TRUE(zstd.Compress(text.substr(pos, nl + 1 - pos), &frame).ok());
    frames += frame;
  }
  ASSERT_TRUE(WriteFileAtomic(dir_.File("p0.jsonl.zst"), frames).ok());
  ASSERT_EQ(std::remove(dir_.File("p0.jsonl").c_str()), 0);
  ExportCounts counts;
  EXPECT_EQ(Export("sft", "", &counts), expected);
  EXPECT_EQ(counts.records, plain.records);
  ASSERT_TRUE(WriteFileAtomic(dir_.File("p1.jsonl.zst"), frame + "not zstd").ok());
  ExportOptions opt;
  opt.output_dir = dir_.path();
  opt.format = "sft";
  std::ostringstream out;
  auto bad = ExportRun(opt, out);
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("p1.jsonl.zst after line 1"), std::string::npos) << bad.status().message();
}

}  // namespace
}  // namespace matrix::cli
