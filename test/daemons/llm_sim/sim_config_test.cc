// Unit tests of matrix-llm-sim flag parsing and validation.
#include "daemons/llm_sim/sim_config.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace matrix::llm_sim {
namespace {

StatusOr<SimConfig> Parse(std::vector<std::string> args, bool* help = nullptr) {
  args.insert(args.begin(), "matrix-llm-sim");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  bool ignored = false;
  return ParseSimConfig(static_cast<int>(argv.size()), argv.data(), help ? help : &ignored);
}

TEST(SimConfigTest, DefaultsMatchTheDocumentation) {
  auto c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->listen, "127.0.0.1:0");
  EXPECT_EQ(c->model_name, "sim");
  EXPECT_EQ(c->max_model_len, 32768);
  EXPECT_EQ(c->slots, 256);
  EXPECT_DOUBLE_EQ(c->step_ms, 8.0);
  EXPECT_DOUBLE_EQ(c->step_ms_per_seq, 0.02);
  EXPECT_DOUBLE_EQ(c->prefill_tokens_per_s, 50000.0);
  EXPECT_DOUBLE_EQ(c->mean_output_tokens, 120.0);
  EXPECT_DOUBLE_EQ(c->tail_alpha, 2.0);
  EXPECT_DOUBLE_EQ(c->speed, 1.0);
  EXPECT_EQ(c->answer_mode, "mc");
  EXPECT_DOUBLE_EQ(c->agree_prob, 0.6);
  EXPECT_DOUBLE_EQ(c->tool_call_prob, 0.3);
  EXPECT_DOUBLE_EQ(c->text_after_tool_prob, 0.8);
  EXPECT_DOUBLE_EQ(c->parallel_tool_prob, 0.1);
  EXPECT_DOUBLE_EQ(c->user_stop_prob, 0.2);
  EXPECT_EQ(c->user_max_turns, 12);
  EXPECT_DOUBLE_EQ(c->retry_after_s, 1.0);
  EXPECT_EQ(c->threads, 1);
}

TEST(SimConfigTest, ParsesEveryKind) {
  auto c = Parse({"--listen", "0.0.0.0:8000", "--slots=64", "--speed", "10", "--fault-429", "0.25",
                  "--answer-mode", "none", "--model-name", "llama", "--fault-seed", "99",
                  "--step-ms-per-seq", "0.5"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->listen, "0.0.0.0:8000");
  EXPECT_EQ(c->slots, 64);
  EXPECT_DOUBLE_EQ(c->speed, 10);
  EXPECT_DOUBLE_EQ(c->fault_429, 0.25);
  EXPECT_EQ(c->answer_mode, "none");
  EXPECT_EQ(c->model_name, "llama");
  EXPECT_EQ(c->fault_seed, 99u);
  EXPECT_DOUBLE_EQ(c->step_ms_per_seq, 0.5);
}

TEST(SimConfigTest, TheSeedIsUsedUnlessToldToIgnoreIt) {
  auto plain = Parse({});
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->ignore_seed);
  auto ignoring = Parse({"--ignore-seed", "true"});
  ASSERT_TRUE(ignoring.ok()) << ignoring.status().ToString();
  EXPECT_TRUE(ignoring->ignore_seed);
}

TEST(SimConfigTest, ToolAndUserSimulationKnobs) {
  auto c = Parse({"--text-after-tool-prob", "0.5", "--parallel-tool-prob=0.25", "--user-stop-prob", "0.05",
                  "--user-max-turns", "30"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_DOUBLE_EQ(c->text_after_tool_prob, 0.5);
  EXPECT_DOUBLE_EQ(c->parallel_tool_prob, 0.25);
  EXPECT_DOUBLE_EQ(c->user_stop_prob, 0.05);
  EXPECT_EQ(c->user_max_turns, 30);
  EXPECT_NE(SimUsage().find("--user-stop-prob"), std::string::npos);
}

TEST(SimConfigTest, InvalidJsonProbIsAProbability) {
  auto def = Parse({});
  ASSERT_TRUE(def.ok());
  EXPECT_DOUBLE_EQ(def->invalid_json_prob, 0.0);
  auto c = Parse({"--invalid-json-prob", "0.25"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_DOUBLE_EQ(c->invalid_json_prob, 0.25);
  EXPECT_NE(SimUsage().find("--invalid-json-prob"), std::string::npos);
  for (const char* bad : {"1.5", "-0.1", "often"}) {
    auto b = Parse({"--invalid-json-prob", bad});
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_NE(b.status().message().find("invalid-json-prob"), std::string::npos) << b.status().message();
  }
}

TEST(SimConfigTest, RejectsBadValuesNamingTheFlag) {
  const std::vector<std::vector<std::string>> bad = {
      {"--slots", "0"},           {"--slots", "many"},      {"--speed", "0"},
      {"--tail-alpha", "1"},      {"--fault-429", "1.5"},   {"--agree-prob", "-0.1"},
      {"--answer-mode", "maybe"}, {"--listen", "nocolon"},  {"--no-such-flag", "1"},
      {"--log-level", "loud"},    {"--max-model-len", "1"}, {"extra-positional"},
      {"--text-after-tool-prob", "2"}, {"--parallel-tool-prob", "-1"}, {"--user-stop-prob", "1.1"},
      {"--user-max-turns", "-1"},      {"--user-max-turns", "many"},
  };
  for (const auto& args : bad) {
    auto c = Parse(args);
    EXPECT_FALSE(c.ok()) << args[0];
    if (!c.ok() && args[0].rfind("--", 0) == 0) {
      EXPECT_NE(c.status().message().find(args[0].substr(2)), std::string::npos)
          << c.status().message();
    }
  }
}

TEST(SimConfigTest, Help) {
  bool help = false;
  auto c = Parse({"--help"}, &help);
  EXPECT_TRUE(c.ok());
  EXPECT_TRUE(help);
  EXPECT_NE(SimUsage().find("--fault-malformed"), std::string::npos);
}

}  // namespace
}  // namespace matrix::llm_sim
