// Unit: cost from per-model tokens and a price table, its projection, and how
// the progress line, the progress files and summary.json carry it.
#include <gtest/gtest.h>

#include <fstream>

#include "common/base/files.h"
#include "common/base/json.h"
#include "daemons/cli/summary.h"
#include "test/support/test_util.h"

namespace matrix::cli {
namespace {

// $1 per million prompt tokens, $2 per million completion tokens.
PriceTable OneModel() { return {{"llama", ModelPrice{1.0, 2.0, "USD"}}}; }

TEST(CostTest, TokensTimesPricesPerMillion) {
  PriceTable prices = {{"big", ModelPrice{3.0, 15.0, "USD"}}, {"small", ModelPrice{0.15, 0.6, "USD"}}};
  TokensByModel tokens = {{"big", {2'000'000, 100'000}}, {"small", {10'000'000, 1'000'000}}, {"free", {5, 5}}};
  auto cost = CostOf(tokens, prices);
  ASSERT_TRUE(cost.has_value());
  EXPECT_EQ(cost->currency, "USD");
  EXPECT_DOUBLE_EQ(cost->by_model.at("big"), 2 * 3.0 + 0.1 * 15.0);
  EXPECT_DOUBLE_EQ(cost->by_model.at("small"), 10 * 0.15 + 1 * 0.6);
  EXPECT_DOUBLE_EQ(cost->total, 7.5 + 2.1);
  EXPECT_EQ(cost->by_model.count("free"), 0u);  // no price: left out

  // A priced model without tokens yet costs nothing; no prices, no cost.
  auto none_yet = CostOf({}, prices);
  ASSERT_TRUE(none_yet.has_value());
  EXPECT_EQ(none_yet->total, 0.0);
  EXPECT_EQ(none_yet->by_model.size(), 2u);
  EXPECT_FALSE(CostOf(tokens, {}).has_value());
}

TEST(CostTest, ProjectionScalesTheMeanCostOfWrittenTasksFromOnePercent) {
  // Fewer than 1% of this run's tasks written: no projection.
  EXPECT_FALSE(ProjectCost(0.5, 0, 1000).has_value());
  EXPECT_FALSE(ProjectCost(0.5, 9, 1000).has_value());
  // From 1%: so far + so far / written * remaining.
  ASSERT_TRUE(ProjectCost(0.5, 10, 1000).has_value());
  EXPECT_DOUBLE_EQ(*ProjectCost(0.5, 10, 1000), 0.5 + 0.05 * 990);
  EXPECT_DOUBLE_EQ(*ProjectCost(2.0, 50, 100), 4.0);
  // Every task written: the projection is what was spent.
  EXPECT_DOUBLE_EQ(*ProjectCost(3.25, 40, 40), 3.25);
  // A small run: one task is already more than 1%.
  EXPECT_DOUBLE_EQ(*ProjectCost(0.01, 1, 40), 0.4);
}

TEST(CostTest, FormatMoney) {
  EXPECT_EQ(FormatMoney(1.234, "USD"), "$1.23");
  EXPECT_EQ(FormatMoney(45.6, "USD"), "$45.60");
  EXPECT_EQ(FormatMoney(0, "USD"), "$0.00");
  EXPECT_EQ(FormatMoney(0.4213, "USD"), "$0.4213");
  EXPECT_EQ(FormatMoney(0.00123, "USD"), "$0.001230");
  EXPECT_EQ(FormatMoney(12.5, "EUR"), "12.50 EUR");
}

Progress Running(int64_t written, int64_t total) {
  Progress p;
  p.total = total;
  p.written = written;
  p.partitions = 1;
  p.tokens_by_model["llama"] = {1'000'000, 100'000};  // $1.00 + $0.20
  return p;
}

TEST(CostTest, ProgressLineShowsCostOnlyWithPrices) {
  Progress p = Running(10, 380);
  std::string line = FormatProgress(p, 10, 1000, 1);
  EXPECT_EQ(line.find('$'), std::string::npos) << line;
  EXPECT_EQ(line.find("so far"), std::string::npos) << line;
  EXPECT_EQ(FormatCost(p), "");

  p.prices = OneModel();
  line = FormatProgress(p, 10, 1000, 1);
  const std::string tail = " | $1.20 so far, ~$45.60 projected";
  ASSERT_GE(line.size(), tail.size());
  EXPECT_EQ(line.substr(line.size() - tail.size()), tail) << line;
  EXPECT_EQ(line.rfind("10/380 tasks", 0), 0u) << line;

  // Under 1% of the tasks: what was spent, no projection.
  Progress early = Running(3, 1000);
  early.prices = OneModel();
  EXPECT_EQ(FormatCost(early), "$1.20 so far");

  // Resumed: the records of earlier runs are neither written by this run nor to write.
  Progress resumed = Running(510, 1000);
  resumed.preexisting = 500;
  resumed.prices = {{"llama", ModelPrice{1.0, 2.0, "EUR"}}};
  EXPECT_EQ(FormatCost(resumed), "1.20 EUR so far, ~60.00 EUR projected");  // 1.20 + 0.12 * 490
}

void WriteJson(const std::string& path, const Json& j) { ASSERT_TRUE(WriteFileAtomic(path, j.dump()).ok()) << path; }

TEST(CostTest, ReadProgressSumsTokensByModelAndTakesTheWorkersPrices) {
  testing::TempDir dir;
  ASSERT_TRUE(MakeDirs(dir.File("progress")).ok());
  const Json prices = {{"llama", {{"input_per_million", 1.0}, {"output_per_million", 2.0}, {"currency", "USD"}}}};
  WriteJson(dir.File("progress/worker-0.json"),
            {{"worker", "worker-0.1"},
             {"partitions", {{"p0", {{"total", 200}, {"written", 4}}}}},
             {"prompt_tokens", 600'000},
             {"completion_tokens", 60'000},
             {"tokens_by_model", {{"llama", {{"prompt", 600'000}, {"completion", 60'000}}}}},
             {"prices", prices}});
  WriteJson(dir.File("progress/worker-1.json"),
            {{"worker", "worker-1.1"},
             {"partitions", {{"p1", {{"total", 180}, {"written", 6}}}}},
             {"prompt_tokens", 400'000},
             {"completion_tokens", 40'000},
             {"tokens_by_model", {{"llama", {{"prompt", 400'000}, {"completion", 40'000}}}}},
             {"prices", prices}});
  Progress p = ReadProgress(dir.path());
  EXPECT_EQ(p.tokens_by_model["llama"].prompt, 1'000'000);
  EXPECT_EQ(p.tokens_by_model["llama"].completion, 100'000);
  ASSERT_EQ(p.prices.size(), 1u);
  EXPECT_DOUBLE_EQ(p.prices["llama"].output_per_million, 2.0);
  EXPECT_EQ(FormatCost(p), "$1.20 so far, ~$45.60 projected");  // 10 of 380 written

  // Progress files without prices (a pipeline without any): no cost.
  testing::TempDir plain;
  ASSERT_TRUE(MakeDirs(plain.File("progress")).ok());
  WriteJson(plain.File("progress/worker-0.json"),
            {{"partitions", {{"p0", {{"total", 10}, {"written", 1}}}}},
             {"tokens_by_model", {{"llama", {{"prompt", 10}, {"completion", 1}}}}}});
  Progress q = ReadProgress(plain.path());
  EXPECT_TRUE(q.prices.empty());
  EXPECT_EQ(FormatProgress(q, 1, 1, 1).find("so far"), std::string::npos);
}

TEST(CostTest, PricesFromJsonSkipsMalformedEntries) {
  PriceTable t = PricesFromJson(Json::parse(R"({
    "a": {"input_per_million": 0.15, "output_per_million": 0.6},
    "b": {"input_per_million": "cheap", "output_per_million": 1},
    "c": {"input_per_million": 1},
    "d": 3,
    "e": {"input_per_million": 1, "output_per_million": 2, "currency": "EUR"}})"));
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t["a"].currency, "USD");
  EXPECT_DOUBLE_EQ(t["a"].input_per_million, 0.15);
  EXPECT_EQ(t["e"].currency, "EUR");
  EXPECT_TRUE(PricesFromJson(Json::array()).empty());
}

Json Turn(const std::string& model, int64_t prompt, int64_t completion) {
  return {{"model", model}, {"usage", {{"prompt_tokens", prompt}, {"completion_tokens", completion}}}};
}

TEST(CostTest, SummaryCostsTheRecordsTokensByModel) {
  testing::TempDir dir;
  {
    std::ofstream out(dir.File("p0.jsonl"));
    Json a = {{"task_id", "r0.t0"}, {"status", "done"},
              {"turns", {Turn("llama", 300'000, 20'000), Turn("judge", 100'000, 5'000), Turn("", 0, 0)}},
              {"usage", {{"prompt_tokens", 400'000}, {"completion_tokens", 25'000}}}};
    Json b = {{"task_id", "r1.t0"}, {"status", "done"},
              {"turns", {Turn("llama", 700'000, 80'000), Turn("other", 10, 10)}},
              {"usage", {{"prompt_tokens", 700'010}, {"completion_tokens", 80'010}}}};
    out << a.dump() << "\n" << b.dump() << "\n";
  }
  auto plain = SummarizeOutput(dir.path());
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->contains("cost")) << plain->dump();

  PriceTable prices = OneModel();
  prices["judge"] = ModelPrice{10.0, 20.0, "USD"};
  auto s = SummarizeOutput(dir.path(), prices);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->contains("cost")) << s->dump();
  const Json& cost = (*s)["cost"];
  EXPECT_EQ(cost["currency"], "USD");
  EXPECT_EQ(cost["by_model"]["llama"]["prompt_tokens"], 1'000'000);
  EXPECT_EQ(cost["by_model"]["llama"]["completion_tokens"], 100'000);
  EXPECT_DOUBLE_EQ(cost["by_model"]["llama"]["cost"].get<double>(), 1.2);
  EXPECT_DOUBLE_EQ(cost["by_model"]["llama"]["input_per_million"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(cost["by_model"]["judge"]["cost"].get<double>(), 1.0 + 0.1);
  EXPECT_DOUBLE_EQ(cost["total"].get<double>(), 2.3);
  EXPECT_EQ(cost["unpriced_models"], Json::array({"other"}));
}

}  // namespace
}  // namespace matrix::cli
