// Integration: the NaturalReasoning curation config end to end on the
// simulator (structured answers matched against their schemas), with typed
// drops, kept-only output and answers that fail their schema.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/base/files.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

std::string Curate(const std::string& args, const std::string& out_dir) {
  std::string out;
  int rc = RunCommand(BinPath("matrix") + " run " + SourcePath("configs/natural_reasoning.yaml") + " " + args +
                          " simulator.speed=20 --output " + out_dir + " --quiet",
                      &out);
  EXPECT_TRUE(rc == 0 || rc == 3) << out;  // 3: some tasks failed (invalid answers)
  return out;
}

std::vector<Json> Lines(const std::string& path) {
  std::vector<Json> out;
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << path;
  if (!text.ok()) return out;
  for (size_t pos = 0; pos < text->size();) {
    size_t nl = text->find('\n', pos);
    if (nl == std::string::npos) nl = text->size();
    out.push_back(Json::parse(text->substr(pos, nl - pos)));
    pos = nl + 1;
  }
  return out;
}

TEST(CurationRunTest, DocumentsAreKeptOrDroppedWithTypedReasons) {
  TempDir dir;
  Curate("", dir.File("out"));
  auto records = ReadRecords(dir.File("out"));
  ASSERT_EQ(records.size(), 200u);
  std::map<std::string, int> by_reason;
  for (const auto& r : records) {
    by_reason[r["status"].get<std::string>() + "/" + r["reason"].get<std::string>()]++;
    const std::string text = r["input"]["text"].get<std::string>();
    if (r["reason"] == "too_short") EXPECT_LT(text.size(), 400u);
    if (r["status"] != "done") continue;
    EXPECT_EQ(r["reason"], "kept");
    const Json& v = r["vars"];
    EXPECT_EQ(v["has_reasoning"], true) << r.dump();
    for (const char* c : {"problem_completeness", "technical_depth", "technical_correctness", "thinking_and_reasoning"})
      EXPECT_GE(v["scores"][c].get<int>(), 3) << r.dump();
    EXPECT_TRUE(v["question"].is_string() && !v["question"].get<std::string>().empty()) << r.dump();
    EXPECT_TRUE(v["reference_answer"].is_string());
    EXPECT_TRUE(v["reasoning_steps"].is_array() && !v["reasoning_steps"].empty());
    ASSERT_EQ(r["turns"].size(), 3u);  // has_reasoning, score, extract_question
  }
  std::string all;
  for (const auto& [k, n] : by_reason) all += k + "=" + std::to_string(n) + " ";
  for (const char* reason : {"filtered/too_short", "filtered/not_english", "filtered/no_reasoning",
                             "filtered/low_score", "done/kept"})
    EXPECT_GT(by_reason[reason], 0) << reason << " in " << all;
  for (const auto& [k, n] : by_reason)
    EXPECT_TRUE(k.rfind("filtered/", 0) == 0 || k == "done/kept") << all;
}

TEST(CurationRunTest, KeptOnlyOutputAndAnswersThatFailTheirSchema) {
  TempDir dir;
  Curate("run.records=done simulator.invalid_json_prob=0.5", dir.File("out"));
  const std::vector<Json> kept = Lines(dir.File("out/p0.jsonl"));
  EXPECT_FALSE(kept.empty());
  for (const auto& r : kept) EXPECT_EQ(r["status"], "done") << r.dump();
  std::set<std::string> ids;
  std::map<std::string, int> dropped_by_reason;
  for (const auto& r : kept) ids.insert(r["task_id"].get<std::string>());
  int retried = 0;
  for (const Json& r : Lines(dir.File("out/dropped-p0.jsonl"))) {
    EXPECT_NE(r["status"], "done");
    EXPECT_FALSE(r.contains("turns"));
    EXPECT_TRUE(ids.insert(r["task_id"].get<std::string>()).second) << "twice: " << r["task_id"];
    dropped_by_reason[r["reason"].get<std::string>()]++;
  }
  EXPECT_EQ(ids.size(), 200u);
  // Half the structured answers are broken: most are asked again and pass,
  // some fail three times and end invalid_output.
  EXPECT_GT(dropped_by_reason["invalid_output"], 0);
  for (const auto& r : kept)
    for (const auto& t : r["turns"]) retried += t.contains("extra") && t["extra"].contains("format_retries");
  EXPECT_GT(retried, 0);
  auto summary = ReadFile(dir.File("out/summary.json"));
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(Json::parse(*summary)["records"], 200);
}

}  // namespace
}  // namespace matrix::testing
