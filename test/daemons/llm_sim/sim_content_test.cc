// Unit tests of the content model (output lengths, determinism, the
// multiple-choice answer sentence, tool calls, structured output, logprobs and
// token ids, request validation, rendering) and of the fault injector.
#include "daemons/llm_sim/sim_content.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "common/base/json_schema.h"
#include "daemons/llm_sim/sim_faults.h"

namespace matrix::llm_sim {
namespace {

Json UserMessage(const std::string& text) { return {{"role", "user"}, {"content", text}}; }

// `messages` is an array of messages, or one message (a braced single
// message may arrive as the object itself).
std::string ChatBody(const Json& messages, const Json& extra = Json::object()) {
  Json body = extra;
  body["model"] = "sim";
  body["messages"] = messages.is_object() ? Json::array({messages}) : messages;
  return body.dump();
}

CompletionRequest MustParse(const std::string& body, const SimConfig& config = SimConfig(),
                            ApiKind kind = ApiKind::kChat) {
  auto r = ParseCompletionRequest(kind, body, config);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : CompletionRequest();
}

CompletionPlan PlanFor(const std::string& body, const SimConfig& config = SimConfig()) {
  return PlanCompletion(MustParse(body, config), config);
}

const std::string kQuestion =
    "Which planet is largest?\nA. Mercury\nB. Venus\nC. Jupiter\nD. Mars\n";

// ------------------------------------------------------------ output length

TEST(OutputLengthTest, MeanIsRoughlyTheConfiguredMean) {
  for (double alpha : {2.0, 3.0}) {
    SimRng rng(42);
    const int n = 200000;
    double sum = 0;
    int64_t min = INT64_MAX;
    for (int i = 0; i < n; ++i) {
      int64_t x = SampleOutputTokens(&rng, 120, alpha);
      sum += static_cast<double>(x);
      min = std::min(min, x);
    }
    EXPECT_NEAR(sum / n, 120.0, alpha == 2.0 ? 12.0 : 6.0) << "alpha " << alpha;
    EXPECT_GE(min, 1);
  }
}

TEST(OutputLengthTest, TailIsLong) {
  SimRng rng(7);
  int over_4x = 0;
  for (int i = 0; i < 100000; ++i) over_4x += SampleOutputTokens(&rng, 120, 2.0) > 480 ? 1 : 0;
  // Lomax(alpha 2): P(X > 4 * mean) = (1 + 4)^-2 = 4 %.
  EXPECT_GT(over_4x, 3000);
  EXPECT_LT(over_4x, 5000);
}

TEST(OutputLengthTest, MaxTokensIsRespectedAndReported) {
  int truncated = 0, natural = 0;
  for (int i = 0; i < 500; ++i) {
    CompletionPlan plan =
        PlanFor(ChatBody({UserMessage("question " + std::to_string(i))}, {{"max_tokens", 20}}));
    ASSERT_LE(plan.completion_tokens(), 20);
    if (plan.finish_reason == "length") {
      EXPECT_EQ(plan.completion_tokens(), 20);
      ++truncated;
    } else {
      EXPECT_EQ(plan.finish_reason, "stop");
      ++natural;
    }
  }
  EXPECT_GT(truncated, 250);  // mean 120: most answers are longer than 20
  EXPECT_GT(natural, 50);
}

TEST(OutputLengthTest, MaxCompletionTokensTakesPrecedence) {
  CompletionPlan plan = PlanFor(ChatBody({UserMessage("hello")}, {{"max_tokens", 500},
                                                                  {"max_completion_tokens", 7},
                                                                  {"ignore_eos", true}}));
  EXPECT_EQ(plan.completion_tokens(), 7);
}

TEST(OutputLengthTest, IgnoreEosAndMinTokens) {
  for (int i = 0; i < 50; ++i) {
    const Json msg = {UserMessage("q" + std::to_string(i))};
    CompletionPlan a = PlanFor(ChatBody(msg, {{"max_tokens", 300}, {"ignore_eos", true}}));
    EXPECT_EQ(a.completion_tokens(), 300);
    EXPECT_EQ(a.finish_reason, "length");
    CompletionPlan b = PlanFor(ChatBody(msg, {{"max_tokens", 400}, {"min_tokens", 250}}));
    EXPECT_GE(b.completion_tokens(), 250);
    EXPECT_LE(b.completion_tokens(), 400);
  }
}

TEST(OutputLengthTest, ClampedToTheContextWindow) {
  SimConfig c;
  c.max_model_len = 64;
  c.mean_output_tokens = 5000;
  CompletionRequest r = MustParse(ChatBody({UserMessage(std::string(160, 'x'))}), c);
  EXPECT_EQ(r.prompt_tokens, 40);
  CompletionPlan plan = PlanCompletion(r, c);
  EXPECT_LE(plan.completion_tokens(), 24);
}

// ------------------------------------------------------------ determinism

TEST(DeterminismTest, SameRequestSameResponse) {
  const std::string body = ChatBody({UserMessage(kQuestion)}, {{"temperature", 0.7}});
  CompletionPlan a = PlanFor(body), b = PlanFor(body);
  EXPECT_EQ(a.Text(), b.Text());
  EXPECT_EQ(a.finish_reason, b.finish_reason);
  EXPECT_FALSE(a.Text().empty());
}

TEST(DeterminismTest, DifferentMessagesOrSeedGiveDifferentText) {
  const std::string a = PlanFor(ChatBody({UserMessage("first question")})).Text();
  const std::string b = PlanFor(ChatBody({UserMessage("second question")})).Text();
  EXPECT_NE(a, b);
  const Json msgs = {UserMessage("same question")};
  const std::string s1 = PlanFor(ChatBody(msgs, {{"seed", 1}})).Text();
  const std::string s1_again = PlanFor(ChatBody(msgs, {{"seed", 1}})).Text();
  const std::string s2 = PlanFor(ChatBody(msgs, {{"seed", 2}})).Text();
  EXPECT_EQ(s1, s1_again);
  EXPECT_NE(s1, s2);
}

// --ignore-seed: two clients sending the same messages with different seeds
// (or none) get the same answer, so orchestrators compare on one workload.
TEST(DeterminismTest, IgnoringTheSeedLeavesOnlyTheMessages) {
  SimConfig config;
  config.ignore_seed = true;
  const Json msgs = {UserMessage("same question")};
  const std::string s1 = PlanFor(ChatBody(msgs, {{"seed", 1}}), config).Text();
  EXPECT_EQ(s1, PlanFor(ChatBody(msgs, {{"seed", 2}}), config).Text());
  EXPECT_EQ(s1, PlanFor(ChatBody(msgs), config).Text());
  EXPECT_NE(s1, PlanFor(ChatBody({UserMessage("another question")}, {{"seed", 1}}), config).Text());
}

TEST(DeterminismTest, KeyOrderDoesNotMatter) {
  const std::string a = R"({"messages":[{"role":"user","content":"hi there"}],"model":"m"})";
  const std::string b = R"({"model":"m","messages":[{"content":"hi there","role":"user"}]})";
  EXPECT_EQ(MustParse(a).seed, MustParse(b).seed);
}

TEST(DeterminismTest, TextIsWordsOfTheRightTokenCount) {
  SimConfig c;
  c.answer_mode = "none";
  CompletionPlan plan = PlanFor(ChatBody({UserMessage("x")}, {{"max_tokens", 40}, {"ignore_eos", true}}), c);
  ASSERT_EQ(plan.completion_tokens(), 40);
  const std::string text = plan.Text();
  EXPECT_TRUE(std::isupper(static_cast<unsigned char>(text[0])));
  EXPECT_EQ(text.back(), '.');
  EXPECT_EQ(std::count(text.begin(), text.end(), ' '), 39);  // one word per token
}

// ------------------------------------------------------------ answer sentence

const std::regex kAnswerRe(R"(The answer is \(([A-Z])\)\.$)");

char AnswerOf(const std::string& text) {
  std::smatch m;
  if (!std::regex_search(text, m, kAnswerRe)) return 0;
  return m[1].str()[0];
}

TEST(AnswerTest, TextEndsWithTheAnswerSentence) {
  for (int i = 0; i < 50; ++i) {
    CompletionPlan plan = PlanFor(ChatBody({UserMessage(kQuestion + std::to_string(i))}));
    char letter = AnswerOf(plan.Text());
    ASSERT_NE(letter, 0) << plan.Text();
    EXPECT_EQ(letter, plan.answer);
  }
}

TEST(AnswerTest, SmallMaxTokensKeepsTheAnswerSentence) {
  const Json msgs = {UserMessage(kQuestion)};
  std::string six = PlanFor(ChatBody(msgs, {{"max_tokens", 6}})).Text();
  EXPECT_TRUE(std::regex_match(six, std::regex(R"(The answer is \([A-D]\)\.)"))) << six;
  std::string seven = PlanFor(ChatBody(msgs, {{"max_tokens", 7}})).Text();
  EXPECT_NE(AnswerOf(seven), 0) << seven;
  EXPECT_EQ(std::count(seven.begin(), seven.end(), ' '), 4);  // "Word. The answer is (X)."
  std::string three = PlanFor(ChatBody(msgs, {{"max_tokens", 3}})).Text();
  EXPECT_EQ(three, "The answer is");
}

TEST(AnswerTest, TemperatureZeroCopiesThePreviousAnswer) {
  SimConfig c;
  c.agree_prob = 0.0;
  for (int i = 0; i < 100; ++i) {
    Json msgs = {UserMessage(kQuestion),
                 {{"role", "assistant"}, {"content", "Let me think " + std::to_string(i) + "."}},
                 UserMessage("My partner says the answer is (C). Do you agree?")};
    CompletionPlan plan = PlanFor(ChatBody(msgs, {{"temperature", 0}}), c);
    EXPECT_EQ(plan.answer, 'C');
  }
}

TEST(AnswerTest, AgreeProbZeroNeverCopies) {
  SimConfig c;
  c.agree_prob = 0.0;
  std::set<char> seen;
  for (int i = 0; i < 200; ++i) {
    Json msgs = {UserMessage(kQuestion + std::to_string(i)),
                 UserMessage("I believe the answer is (B).")};
    CompletionPlan plan = PlanFor(ChatBody(msgs, {{"temperature", 0.7}}), c);
    EXPECT_NE(plan.answer, 'B');
    EXPECT_GE(plan.answer, 'A');
    EXPECT_LE(plan.answer, 'D');
    seen.insert(plan.answer);
  }
  EXPECT_EQ(seen.size(), 3u);
}

TEST(AnswerTest, AgreeProbSetsTheAgreementRate) {
  SimConfig c;  // agree_prob 0.6
  int agree = 0;
  const int n = 2000;
  for (int i = 0; i < n; ++i) {
    Json msgs = {UserMessage(kQuestion + std::to_string(i)), UserMessage("The answer is (D).")};
    agree += PlanFor(ChatBody(msgs), c).answer == 'D' ? 1 : 0;
  }
  EXPECT_NEAR(static_cast<double>(agree) / n, 0.6, 0.04);
}

TEST(AnswerTest, LetterRangeComesFromTheOptions) {
  std::set<char> seen;
  for (int i = 0; i < 200; ++i)
    seen.insert(PlanFor(ChatBody({UserMessage(kQuestion + std::to_string(i))})).answer);
  EXPECT_EQ(seen, (std::set<char>{'A', 'B', 'C', 'D'}));

  std::set<char> default_range;
  for (int i = 0; i < 400; ++i)
    default_range.insert(PlanFor(ChatBody({UserMessage("no options " + std::to_string(i))})).answer);
  EXPECT_EQ(default_range.size(), 10u);
  EXPECT_EQ(*default_range.rbegin(), 'J');
}

TEST(AnswerTest, OptionFormats) {
  EXPECT_EQ(LastOptionLetter({{"user", "Q?\n(A) x\n(B) y\n(C) z"}}), 'C');
  EXPECT_EQ(LastOptionLetter({{"user", "Q?\n  A) x\n  B) y"}}), 'B');
  EXPECT_EQ(LastOptionLetter({{"user", "Q?\nA: x\nB: y\nC: z\nE: gap"}}), 'C');
  EXPECT_EQ(LastOptionLetter({{"user", "I. think so"}}), 'J');
  EXPECT_EQ(LastOptionLetter({{"user", "no options"}}), 'J');
}

TEST(AnswerTest, FindsTheLatestAnswerInEitherForm) {
  EXPECT_EQ(FindPreviousAnswer({{"user", "so the answer is B."}}, 'J'), 'B');
  EXPECT_EQ(FindPreviousAnswer({{"user", "The Answer is: **(E)**"}}, 'J'), 'E');
  EXPECT_EQ(FindPreviousAnswer({{"user", "answer is (A)"}, {"assistant", "answer is (C)"}}, 'J'), 'C');
  EXPECT_EQ(FindPreviousAnswer({{"user", "first the answer is (A), then the answer is (F)"}}, 'J'),
            'F');
  EXPECT_EQ(FindPreviousAnswer({{"user", "the answer is Banana"}}, 'J'), std::nullopt);
  EXPECT_EQ(FindPreviousAnswer({{"user", "no answer here"}}, 'J'), std::nullopt);
  // A format instruction ("The answer is (X)") is outside the option range.
  EXPECT_EQ(FindPreviousAnswer({{"system", "End with \"The answer is (X)\"."}}, 'D'), std::nullopt);
}

TEST(AnswerTest, ModeNoneHasNoAnswerSentence) {
  SimConfig c;
  c.answer_mode = "none";
  for (int i = 0; i < 20; ++i) {
    CompletionPlan plan = PlanFor(ChatBody({UserMessage(kQuestion + std::to_string(i))}), c);
    EXPECT_EQ(plan.answer, 0);
    EXPECT_EQ(AnswerOf(plan.Text()), 0);
  }
}

// ------------------------------------------------------------ tool calls

const Json kTools = Json::parse(R"([
  {"type":"function","function":{"name":"get_order","parameters":{"type":"object",
    "properties":{"order_id":{"type":"string"},"count":{"type":"integer","minimum":2,"maximum":5},
                  "priority":{"enum":["low","high"]},"express":{"type":"boolean"},
                  "tags":{"type":"array","items":{"type":"string"}},
                  "address":{"type":"object","properties":{"zip":{"type":"string"}}}},
    "required":["order_id"]}}},
  {"type":"function","function":{"name":"cancel_order","parameters":{"type":"object",
    "properties":{"order_id":{"type":"string"}}}}}])");

TEST(ToolCallTest, ArgumentsFollowTheSchema) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 0.0;
  std::set<std::string> names;
  for (int i = 0; i < 40; ++i) {
    CompletionPlan plan =
        PlanFor(ChatBody({UserMessage("help " + std::to_string(i))}, {{"tools", kTools}}), c);
    ASSERT_TRUE(plan.tool_call);
    ASSERT_EQ(plan.calls.size(), 1u);  // parallel calls are off by default most of the time
    EXPECT_EQ(plan.finish_reason, "tool_calls");
    EXPECT_EQ(plan.calls[0].id.rfind("call_", 0), 0u);
    names.insert(plan.calls[0].name);
    Json args = Json::parse(plan.Text());
    ASSERT_TRUE(args.is_object());
    ASSERT_TRUE(args.contains("order_id"));  // required, or the schema has no `required` list
    EXPECT_TRUE(args["order_id"].is_string());
    if (plan.calls[0].name == "get_order") {  // optional properties are present about half the time
      if (args.contains("count")) {
        EXPECT_GE(args["count"].get<int>(), 2);
        EXPECT_LE(args["count"].get<int>(), 5);
      }
      EXPECT_TRUE(!args.contains("priority") || args["priority"] == "low" || args["priority"] == "high");
      EXPECT_TRUE(!args.contains("express") || args["express"].is_boolean());
      EXPECT_TRUE(!args.contains("tags") || args["tags"].is_array());
      EXPECT_TRUE(!args.contains("address") || args["address"]["zip"].is_string());
    }
    EXPECT_EQ(plan.Pieces(1, plan.completion_tokens()), plan.Text());  // fragments reassemble
    EXPECT_EQ(plan.Pieces(0, 1), "");  // the header piece
  }
  EXPECT_EQ(names.size(), 2u);
}

TEST(ToolCallTest, ProbabilityAndChoices) {
  SimConfig never;
  never.tool_call_prob = 0.0;
  SimConfig always;
  always.tool_call_prob = 1.0;
  const Json msgs = {UserMessage("help")};
  EXPECT_FALSE(PlanFor(ChatBody(msgs, {{"tools", kTools}}), never).tool_call);
  EXPECT_FALSE(PlanFor(ChatBody(msgs, {{"tools", kTools}, {"tool_choice", "none"}}), always).tool_call);
  CompletionPlan forced = PlanFor(
      ChatBody(msgs, {{"tools", kTools},
                      {"tool_choice", {{"type", "function"}, {"function", {{"name", "cancel_order"}}}}}}),
      never);
  EXPECT_TRUE(forced.tool_call);
  ASSERT_EQ(forced.calls.size(), 1u);
  EXPECT_EQ(forced.calls[0].name, "cancel_order");
  EXPECT_TRUE(PlanFor(ChatBody(msgs, {{"tools", kTools}, {"tool_choice", "required"}}), never).tool_call);

  int calls = 0;
  for (int i = 0; i < 1000; ++i)
    calls += PlanFor(ChatBody({UserMessage("q" + std::to_string(i))}, {{"tools", kTools}})).tool_call;
  EXPECT_NEAR(calls / 1000.0, 0.3, 0.05);
}

TEST(ToolCallTest, AnswersWithTextAfterAToolResult) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.text_after_tool_prob = 1.0;
  Json msgs = {UserMessage("where is my order?"),
               {{"role", "assistant"},
                {"content", nullptr},
                {"tool_calls",
                 {{{"id", "call_1"},
                   {"type", "function"},
                   {"function", {{"name", "get_order"}, {"arguments", "{}"}}}}}}},
               {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "{\"status\":\"shipped\"}"}}};
  CompletionPlan plan = PlanFor(ChatBody(msgs, {{"tools", kTools}}), c);
  EXPECT_FALSE(plan.tool_call);
  EXPECT_NE(plan.finish_reason, "tool_calls");
  EXPECT_FALSE(plan.Text().empty());
}

// ------------------------------------------------------------ validation

TEST(ParseTest, RejectsBadRequests) {
  SimConfig c;
  const std::vector<std::string> bad = {
      "{bad json",
      "[1,2]",
      R"({"model":"sim"})",
      R"({"messages":[]})",
      R"({"messages":"hello"})",
      R"({"messages":[{"content":"no role"}]})",
      R"({"messages":[{"role":"user","content":42}]})",
      R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})",
      R"({"messages":[{"role":"user","content":"x"}],"max_tokens":"ten"})",
      R"({"messages":[{"role":"user","content":"x"}],"n":2})",
      R"({"messages":[{"role":"user","content":"x"}],"temperature":-1})",
      R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})",
      R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})",
      R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"required"})",
  };
  for (const std::string& body : bad) {
    auto r = ParseCompletionRequest(ApiKind::kChat, body, c);
    EXPECT_FALSE(r.ok()) << body;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    }
  }
  EXPECT_FALSE(ParseCompletionRequest(ApiKind::kText, R"({"prompt":{"a":1}})", c).ok());
  EXPECT_FALSE(ParseCompletionRequest(ApiKind::kText, R"({"model":"sim"})", c).ok());
}

TEST(ParseTest, ContextLengthIsEnforcedLikeVllm) {
  SimConfig c;
  c.max_model_len = 100;
  auto too_long = ParseCompletionRequest(ApiKind::kChat, ChatBody({UserMessage(std::string(800, 'a'))}), c);
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.status().message().find("maximum context length"), std::string::npos);
  auto with_max = ParseCompletionRequest(
      ApiKind::kChat, ChatBody({UserMessage(std::string(200, 'a'))}, {{"max_tokens", 60}}), c);
  ASSERT_FALSE(with_max.ok());
  EXPECT_NE(with_max.status().message().find("maximum context length"), std::string::npos);
  EXPECT_NE(with_max.status().message().find("110 tokens"), std::string::npos);
  EXPECT_TRUE(ParseCompletionRequest(ApiKind::kChat,
                                     ChatBody({UserMessage(std::string(200, 'a'))}, {{"max_tokens", 50}}), c)
                  .ok());
}

TEST(ParseTest, CountsAboutOneTokenPerFourCharacters) {
  EXPECT_EQ(CountTokens(0), 1);
  EXPECT_EQ(CountTokens(4), 1);
  EXPECT_EQ(CountTokens(5), 2);
  EXPECT_EQ(MustParse(ChatBody({UserMessage(std::string(400, 'a'))})).prompt_tokens, 100);
  Json parts = {{{"role", "user"},
                 {"content", {{{"type", "text"}, {"text", std::string(20, 'a')}},
                              {{"type", "image_url"}, {"image_url", {{"url", "x"}}}},
                              {{"type", "text"}, {"text", std::string(19, 'b')}}}}}};
  EXPECT_EQ(MustParse(ChatBody(parts)).prompt_tokens, 10);  // 20 + "\n" + 19 characters
  Json two = {UserMessage(std::string(40, 'a')), {{"role", "assistant"}, {"content", std::string(40, 'b')}}};
  EXPECT_EQ(MustParse(ChatBody(two)).prompt_tokens, 20);
}

TEST(ParseTest, TextCompletionPromptForms) {
  SimConfig c;
  EXPECT_EQ(MustParse(R"({"prompt":"abcdefgh"})", c, ApiKind::kText).prompt_tokens, 2);
  EXPECT_EQ(MustParse(R"({"prompt":["abcdefghijkl"]})", c, ApiKind::kText).prompt_tokens, 3);
  EXPECT_EQ(MustParse(R"({"prompt":[1,2,3,4,5]})", c, ApiKind::kText).prompt_tokens, 5);
  EXPECT_EQ(MustParse(R"({"prompt":[[1,2,3]]})", c, ApiKind::kText).prompt_tokens, 3);
}

TEST(ParseTest, ModelAndStreamOptions) {
  CompletionRequest r = MustParse(
      R"({"model":"llama","messages":[{"role":"user","content":"x"}],"stream":true,
          "stream_options":{"include_usage":true},"seed":-5,"temperature":0})");
  EXPECT_EQ(r.model, "llama");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_TRUE(r.temperature.has_value());
  EXPECT_EQ(*r.temperature, 0.0);
  EXPECT_EQ(MustParse(R"({"messages":[{"role":"user","content":"x"}]})").model, "sim");
}

// ------------------------------------------------------------ rendering

TEST(RenderTest, ChatCompletionHasTheVllmShape) {
  const std::string body = ChatBody({UserMessage(kQuestion)}, {{"max_tokens", 50}});
  CompletionRequest r = MustParse(body);
  CompletionPlan plan = PlanCompletion(r, SimConfig());
  Json j = Json::parse(RenderCompletion(r, plan, {"chatcmpl-1", 1700000000}));
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "sim");
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], plan.Text());
  EXPECT_EQ(j["choices"][0]["finish_reason"], plan.finish_reason);
  EXPECT_EQ(j["usage"]["prompt_tokens"], r.prompt_tokens);
  EXPECT_EQ(j["usage"]["completion_tokens"], plan.completion_tokens());
  EXPECT_EQ(j["usage"]["total_tokens"], r.prompt_tokens + plan.completion_tokens());
}

// Splits an SSE body into its data payloads.
std::vector<std::string> DataLines(const std::string& sse) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = sse.find("data: ", pos)) != std::string::npos) {
    size_t end = sse.find("\n\n", pos);
    out.push_back(sse.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

TEST(RenderTest, StreamChunksReassembleAndEndWithDone) {
  CompletionRequest r = MustParse(ChatBody({UserMessage(kQuestion)},
                                           {{"stream", true},
                                            {"max_tokens", 30},
                                            {"stream_options", {{"include_usage", true}}}}));
  CompletionPlan plan = PlanCompletion(r, SimConfig());
  StreamRenderer renderer(&r, &plan, {"chatcmpl-2", 1});
  std::string sse;
  for (int64_t t = 0; t < plan.completion_tokens(); t += 3)
    sse += renderer.Tokens(t, std::min(t + 3, plan.completion_tokens()));
  sse += renderer.Finish();
  std::vector<std::string> data = DataLines(sse);
  ASSERT_GE(data.size(), 4u);
  EXPECT_EQ(data.back(), "[DONE]");
  std::string content;
  std::string finish;
  bool saw_usage = false, saw_role = false;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    Json chunk = Json::parse(data[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    EXPECT_EQ(chunk["id"], "chatcmpl-2");
    if (chunk.contains("usage")) {
      saw_usage = true;
      EXPECT_EQ(chunk["usage"]["completion_tokens"], plan.completion_tokens());
      continue;
    }
    const Json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("role")) saw_role = true;
    if (delta.contains("content") && delta["content"].is_string()) content += delta["content"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null()) finish = chunk["choices"][0]["finish_reason"];
  }
  EXPECT_TRUE(saw_role);
  EXPECT_TRUE(saw_usage);
  EXPECT_EQ(content, plan.Text());
  EXPECT_EQ(finish, plan.finish_reason);
}

TEST(RenderTest, ToolCallStreamReassembles) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 0.0;
  CompletionRequest r = MustParse(ChatBody({UserMessage("x")}, {{"tools", kTools}, {"stream", true}}), c);
  CompletionPlan plan = PlanCompletion(r, c);
  ASSERT_TRUE(plan.tool_call);
  StreamRenderer renderer(&r, &plan, {"chatcmpl-3", 1});
  std::string sse;
  for (int64_t t = 0; t < plan.completion_tokens(); ++t) sse += renderer.Tokens(t, t + 1);
  sse += renderer.Finish();
  std::string args, name, finish;
  for (const std::string& d : DataLines(sse)) {
    if (d == "[DONE]") continue;
    Json chunk = Json::parse(d);
    const Json& choice = chunk["choices"][0];
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
    if (!choice["delta"].contains("tool_calls")) continue;
    const Json& call = choice["delta"]["tool_calls"][0];
    if (call["function"].contains("name")) name = call["function"]["name"];
    args += call["function"]["arguments"].get<std::string>();
  }
  ASSERT_EQ(plan.calls.size(), 1u);
  EXPECT_EQ(name, plan.calls[0].name);
  EXPECT_EQ(args, plan.Text());
  EXPECT_EQ(finish, "tool_calls");
}

TEST(RenderTest, TextCompletionShape) {
  CompletionRequest r = MustParse(R"({"prompt":"Once upon a time","max_tokens":12})", SimConfig(),
                                  ApiKind::kText);
  CompletionPlan plan = PlanCompletion(r, SimConfig());
  Json j = Json::parse(RenderCompletion(r, plan, {"cmpl-1", 1}));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], plan.Text());
  EXPECT_EQ(j["usage"]["completion_tokens"], plan.completion_tokens());
}

TEST(RenderTest, MalformedBodiesAreUnusable) {
  CompletionRequest r = MustParse(ChatBody({UserMessage("x")}));
  CompletionPlan plan = PlanCompletion(r, SimConfig());
  EXPECT_THROW(Json::parse(RenderMalformed(r, plan, {"id", 1}, 0)), Json::parse_error);
  Json no_choices = Json::parse(RenderMalformed(r, plan, {"id", 1}, 1));
  EXPECT_FALSE(no_choices.contains("choices"));
}

TEST(RenderTest, ErrorBodyIsOpenAiStyle) {
  Json j = Json::parse(RenderError(400, "invalid_request_error", "bad"));
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["code"], 400);
}

// ------------------------------------------------------------ structured output

Json SchemaFormat(const Json& schema) {
  return {{"type", "json_schema"}, {"json_schema", {{"name", "reply"}, {"schema", schema}, {"strict", true}}}};
}

// Schemas of the shapes structured-output clients send.
const std::vector<Json>& StructuredSchemas() {
  static const std::vector<Json> kSchemas = {
      // Nested objects, enums, integer ranges, optional properties.
      Json::parse(R"({"type":"object","properties":{
          "verdict":{"type":"string","enum":["yes","no","unsure"]},
          "score":{"type":"integer","minimum":1,"maximum":10},
          "detail":{"type":"object","properties":{
              "reason":{"type":"string","minLength":5,"maxLength":40},
              "weight":{"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1},
              "flags":{"type":"object","properties":{"urgent":{"type":"boolean"},"level":{"const":3}},
                       "required":["urgent","level"]}},
            "required":["reason","flags"]},
          "comment":{"type":["string","null"]}},
        "required":["verdict","score","detail"],"additionalProperties":false})"),
      // Arrays with minItems/maxItems, unique enum items, tuples, multipleOf.
      Json::parse(R"({"type":"object","properties":{
          "steps":{"type":"array","items":{"type":"string","maxLength":30},"minItems":3,"maxItems":6},
          "tags":{"type":"array","items":{"enum":["a","b","c"]},"minItems":2,"uniqueItems":true},
          "point":{"type":"array","items":[{"type":"number"},{"type":"number"}],"minItems":2,"maxItems":2},
          "none":{"type":"array","items":{"type":"integer"},"maxItems":0},
          "even":{"type":"integer","multipleOf":2,"minimum":-9,"exclusiveMaximum":9}},
        "required":["steps","tags","point","none","even"]})"),
      // anyOf / oneOf with a null option, allOf.
      Json::parse(R"({"type":"object","properties":{
          "value":{"anyOf":[{"type":"integer","minimum":100,"maximum":200},{"type":"string","enum":["n/a"]}]},
          "maybe":{"anyOf":[{"type":"string","maxLength":8},{"type":"null"}]},
          "shape":{"oneOf":[
              {"type":"object","properties":{"kind":{"const":"circle"},"r":{"type":"number","minimum":0}},
               "required":["kind","r"],"additionalProperties":false},
              {"type":"object","properties":{"kind":{"const":"square"},"side":{"type":"integer","minimum":1}},
               "required":["kind","side"],"additionalProperties":false}]},
          "both":{"allOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},
                           {"properties":{"b":{"type":"boolean"}},"required":["b"]}]}},
        "required":["value","maybe","shape","both"]})"),
      // $ref to $defs and definitions, and a recursive tree.
      Json::parse(R"({"type":"object","$defs":{
          "person":{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":120},
                                                "address":{"$ref":"#/definitions/address"}},
                    "required":["name","age","address"],"additionalProperties":false},
          "node":{"type":"object","properties":{"label":{"type":"string"},
                                              "children":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":3}},
                  "required":["label","children"]}},
        "definitions":{"address":{"type":"object","properties":{"city":{"type":"string"},"zip":{"type":"string"}},
                                  "required":["city","zip"]}},
        "properties":{"people":{"type":"array","items":{"$ref":"#/$defs/person"},"minItems":1,"maxItems":4},
                      "tree":{"$ref":"#/$defs/node"}},
        "required":["people","tree"]})"),
      // Recursion through a required property that anyOf can end with null.
      Json::parse(R"({"$ref":"#/definitions/list","definitions":{"list":{"type":"object",
          "properties":{"head":{"type":"integer"},"tail":{"anyOf":[{"$ref":"#/definitions/list"},{"type":"null"}]}},
          "required":["head","tail"]}}})"),
      // A root that is not an object.
      Json::parse(R"({"type":"array","items":{"type":"object","properties":{"id":{"type":"integer","minimum":1},
          "when":{"type":"string","format":"date"}},"required":["id","when"]},"minItems":2,"maxItems":5})"),
  };
  return kSchemas;
}

TEST(StructuredOutputTest, JsonSchemaRepliesSatisfyTheSchemaForManySeeds) {
  SimConfig c;  // answer_mode "mc": structured replies still carry no answer sentence
  for (size_t s = 0; s < StructuredSchemas().size(); ++s) {
    const Json& schema = StructuredSchemas()[s];
    auto compiled = JsonSchema::Compile(schema);
    ASSERT_TRUE(compiled.ok()) << compiled.status().ToString();
    std::set<std::string> distinct;
    for (int seed = 0; seed < 150; ++seed) {
      CompletionPlan plan = PlanFor(ChatBody({UserMessage(kQuestion)},
                                             {{"seed", seed}, {"response_format", SchemaFormat(schema)}}),
                                    c);
      ASSERT_TRUE(plan.structured);
      EXPECT_FALSE(plan.broken);
      EXPECT_EQ(plan.finish_reason, "stop");
      EXPECT_EQ(plan.answer, 0);
      Json reply;
      ASSERT_NO_THROW(reply = Json::parse(plan.Text())) << plan.Text();
      Status valid = compiled->Validate(reply);
      EXPECT_TRUE(valid.ok()) << "schema " << s << " seed " << seed << ": " << valid.ToString() << "\n"
                              << plan.Text();
      // One piece per completion token, about four bytes each.
      EXPECT_EQ(plan.completion_tokens(), static_cast<int64_t>((plan.Text().size() + 3) / 4));
      distinct.insert(plan.Text());
    }
    EXPECT_GT(distinct.size(), 20u) << "schema " << s;
  }
}

TEST(StructuredOutputTest, FreeTextGrowsToLongTailedLengthsAndStillMatches) {
  // Question extraction: open strings and a list of steps take the reply's
  // sampled length; the verdict schema (enums, integers) stays short.
  const Json extraction = Json::parse(R"({"type":"object","properties":{
      "question":{"type":"string","minLength":1},"answer":{"type":"string"},
      "steps":{"type":"array","items":{"type":"string"},"minItems":1,"maxItems":5},
      "label":{"enum":["a","b"]},"code":{"type":"string","maxLength":4}},
    "required":["question","answer","steps","label","code"]})");
  auto compiled = JsonSchema::Compile(extraction);
  ASSERT_TRUE(compiled.ok());
  SimConfig c;
  c.mean_output_tokens = 200;
  c.tail_alpha = 1.5;
  std::vector<int64_t> lengths;
  for (int seed = 0; seed < 400; ++seed) {
    CompletionPlan plan = PlanFor(ChatBody({UserMessage("doc")}, {{"seed", seed}, {"response_format",
                                                                                    SchemaFormat(extraction)}}),
                                  c);
    Json reply = Json::parse(plan.Text());
    ASSERT_TRUE(compiled->Validate(reply).ok()) << plan.Text();
    EXPECT_LE(reply["code"].get<std::string>().size(), 4u);
    lengths.push_back(plan.completion_tokens());
  }
  std::sort(lengths.begin(), lengths.end());
  const int64_t median = lengths[lengths.size() / 2], p99 = lengths[lengths.size() * 99 / 100];
  EXPECT_GT(median, 40);  // Lomax, mean 200, shape 1.5: median about 59
  EXPECT_GT(p99, 4 * median) << "median " << median << " p99 " << p99;
}

TEST(StructuredOutputTest, OptionalPropertiesAndOptionsVary) {
  std::map<std::string, int> seen;
  for (int seed = 0; seed < 200; ++seed) {
    Json reply = Json::parse(
        PlanFor(ChatBody({UserMessage("q")}, {{"seed", seed}, {"response_format", SchemaFormat(StructuredSchemas()[0])}}))
            .Text());
    if (reply.contains("comment")) ++seen["comment"];
    seen["verdict=" + reply["verdict"].get<std::string>()]++;
    Json alt = Json::parse(
        PlanFor(ChatBody({UserMessage("q")}, {{"seed", seed}, {"response_format", SchemaFormat(StructuredSchemas()[2])}}))
            .Text());
    seen[alt["value"].is_string() ? "value:string" : "value:integer"]++;
    seen["shape=" + alt["shape"]["kind"].get<std::string>()]++;
  }
  EXPECT_GT(seen["comment"], 50);
  EXPECT_LT(seen["comment"], 150);
  for (const char* key : {"verdict=yes", "verdict=no", "verdict=unsure", "value:string", "value:integer",
                          "shape=circle", "shape=square"})
    EXPECT_GT(seen[key], 20) << key;
}

TEST(StructuredOutputTest, JsonObjectRepliesAreObjectsOfFillerWords) {
  const std::string body_format = R"({"type":"json_object"})";
  std::set<std::string> distinct;
  for (int seed = 0; seed < 100; ++seed) {
    CompletionPlan plan = PlanFor(
        ChatBody({UserMessage(kQuestion)}, {{"seed", seed}, {"response_format", Json::parse(body_format)}}));
    ASSERT_TRUE(plan.structured);
    Json reply;
    ASSERT_NO_THROW(reply = Json::parse(plan.Text())) << plan.Text();
    ASSERT_TRUE(reply.is_object());
    EXPECT_GE(reply.size(), 2u);
    EXPECT_LE(reply.size(), 5u);
    EXPECT_EQ(plan.Text().find("The answer is"), std::string::npos);
    distinct.insert(plan.Text());
  }
  EXPECT_GT(distinct.size(), 90u);
  // Same request, same reply.
  const std::string body =
      ChatBody({UserMessage("x")}, {{"seed", 5}, {"response_format", Json::parse(body_format)}});
  EXPECT_EQ(PlanFor(body).Text(), PlanFor(body).Text());
}

TEST(StructuredOutputTest, MaxTokensCutsTheJson) {
  const Json format = SchemaFormat(StructuredSchemas()[0]);
  CompletionPlan full = PlanFor(ChatBody({UserMessage("q")}, {{"seed", 1}, {"response_format", format}}));
  ASSERT_GT(full.completion_tokens(), 5);
  CompletionPlan cut =
      PlanFor(ChatBody({UserMessage("q")}, {{"seed", 1}, {"max_tokens", 5}, {"response_format", format}}));
  EXPECT_EQ(cut.completion_tokens(), 5);
  EXPECT_EQ(cut.finish_reason, "length");
  EXPECT_EQ(cut.Text(), std::string(full.Pieces(0, 5)));
  EXPECT_THROW(Json::parse(cut.Text()), Json::parse_error);
  // min_tokens pads with whitespace, which keeps the JSON whole.
  CompletionPlan padded = PlanFor(ChatBody(
      {UserMessage("q")}, {{"seed", 1}, {"min_tokens", full.completion_tokens() + 7}, {"response_format", format}}));
  EXPECT_EQ(padded.completion_tokens(), full.completion_tokens() + 7);
  EXPECT_EQ(Json::parse(padded.Text()), Json::parse(full.Text()));
}

TEST(StructuredOutputTest, InvalidJsonProbBreaksReplies) {
  SimConfig always;
  always.invalid_json_prob = 1.0;
  int unparsable = 0, missing_required = 0;
  for (size_t s = 0; s < StructuredSchemas().size(); ++s) {
    auto compiled = JsonSchema::Compile(StructuredSchemas()[s]);
    ASSERT_TRUE(compiled.ok());
    for (int seed = 0; seed < 40; ++seed) {
      CompletionPlan plan = PlanFor(
          ChatBody({UserMessage("q")}, {{"seed", seed}, {"response_format", SchemaFormat(StructuredSchemas()[s])}}),
          always);
      EXPECT_TRUE(plan.broken);
      EXPECT_EQ(plan.finish_reason, "stop");
      Json reply;
      try {
        reply = Json::parse(plan.Text());
      } catch (const Json::parse_error&) {
        ++unparsable;
        continue;
      }
      EXPECT_FALSE(compiled->Validate(reply).ok()) << plan.Text();
      ++missing_required;
    }
  }
  EXPECT_GT(unparsable, 40);
  EXPECT_GT(missing_required, 40);
  // json_object replies break by being cut short.
  for (int seed = 0; seed < 30; ++seed)
    EXPECT_THROW(Json::parse(PlanFor(ChatBody({UserMessage("q")}, {{"seed", seed},
                                                                   {"response_format", {{"type", "json_object"}}}}),
                                     always)
                                 .Text()),
                 Json::parse_error);
  // A rate in between breaks about that share; 0 (the default) none.
  SimConfig some;
  some.invalid_json_prob = 0.3;
  int broken = 0;
  for (int seed = 0; seed < 1000; ++seed)
    broken += PlanFor(ChatBody({UserMessage("q")}, {{"seed", seed}, {"response_format", {{"type", "json_object"}}}}),
                      some)
                  .broken;
  EXPECT_GT(broken, 240);
  EXPECT_LT(broken, 360);
}

TEST(StructuredOutputTest, BadResponseFormatsAreRefusedNamingTheField) {
  const std::vector<std::pair<Json, std::string>> bad = {
      {Json::parse(R"({"type":"xml"})"), "response_format.type"},
      {Json::parse(R"({"type":"regex"})"), "response_format.type"},
      {Json::parse(R"({})"), "response_format.type"},
      {Json::parse(R"("json_object")"), "response_format"},
      {Json::parse(R"({"type":"json_schema"})"), "response_format.json_schema"},
      {Json::parse(R"({"type":"json_schema","json_schema":{"schema":{"type":"object"}}})"),
       "response_format.json_schema.name"},
      {Json::parse(R"({"type":"json_schema","json_schema":{"name":"x","schema":[1]}})"),
       "response_format.json_schema.schema"},
      {Json::parse(R"({"type":"json_schema","json_schema":{"name":"x","schema":{"type":"colour"}}})"),
       "response_format.json_schema.schema"},
  };
  for (const auto& [format, field] : bad) {
    auto r = ParseCompletionRequest(ApiKind::kChat, ChatBody({UserMessage("q")}, {{"response_format", format}}),
                                    SimConfig());
    ASSERT_FALSE(r.ok()) << format.dump();
    EXPECT_NE(r.status().message().find("'" + field), std::string::npos) << r.status().message();
  }
}

TEST(StructuredOutputTest, TextFormatAndToolCallsKeepTheirBehaviour) {
  const std::string plain = ChatBody({UserMessage(kQuestion)}, {{"seed", 3}});
  const std::string text = ChatBody({UserMessage(kQuestion)}, {{"seed", 3}, {"response_format", {{"type", "text"}}}});
  CompletionPlan a = PlanFor(plain), b = PlanFor(text);
  EXPECT_EQ(a.Text(), b.Text());
  EXPECT_FALSE(b.structured);
  EXPECT_NE(b.answer, 0);
  // A planned tool call wins over response_format.
  CompletionPlan call = PlanFor(ChatBody({UserMessage("q")}, {{"tools", kTools},
                                                              {"tool_choice", "required"},
                                                              {"response_format", {{"type", "json_object"}}}}));
  EXPECT_TRUE(call.tool_call);
  EXPECT_FALSE(call.structured);
  // Text completions accept response_format too.
  CompletionRequest r = MustParse(R"({"prompt":"Rate this.","response_format":{"type":"json_object"}})",
                                  SimConfig(), ApiKind::kText);
  EXPECT_TRUE(Json::parse(PlanCompletion(r, SimConfig()).Text()).is_object());
}

// ------------------------------------------------------------ logprobs and token ids

void ExpectSortedAlternatives(const Json& top, size_t n) {
  ASSERT_EQ(top.size(), n);
  for (size_t k = 0; k < top.size(); ++k) {
    EXPECT_LE(top[k]["logprob"].get<double>(), 0.0);
    if (k > 0) {
      EXPECT_LE(top[k]["logprob"].get<double>(), top[k - 1]["logprob"].get<double>());
    }
  }
}

TEST(LogprobsTest, ChatEntriesCoverEveryCompletionToken) {
  for (int seed = 0; seed < 20; ++seed) {
    const int n = seed % 6;  // top_logprobs 0..5
    CompletionRequest r = MustParse(ChatBody(
        {UserMessage(kQuestion)},
        {{"seed", seed}, {"logprobs", true}, {"top_logprobs", n}, {"return_token_ids", true}}));
    CompletionPlan plan = PlanCompletion(r, SimConfig());
    Json j = Json::parse(RenderCompletion(r, plan, {"chatcmpl-1", 1}));
    const Json& content = j["choices"][0]["logprobs"]["content"];
    ASSERT_EQ(static_cast<int64_t>(content.size()), j["usage"]["completion_tokens"].get<int64_t>());
    std::string text;
    for (const Json& e : content) {
      const std::string token = e["token"];
      text += token;
      EXPECT_LE(e["logprob"].get<double>(), 0.0);
      ASSERT_EQ(e["bytes"].size(), token.size());
      for (size_t b = 0; b < token.size(); ++b) EXPECT_EQ(e["bytes"][b], static_cast<unsigned char>(token[b]));
      ExpectSortedAlternatives(e["top_logprobs"], static_cast<size_t>(n));
      // The chosen token, when among the alternatives, has its own logprob there.
      for (const Json& alt : e["top_logprobs"])
        if (alt["token"] == token) {
          EXPECT_EQ(alt["logprob"], e["logprob"]);
        }
    }
    EXPECT_EQ(text, plan.Text());
    const Json& ids = j["choices"][0]["token_ids"];
    ASSERT_EQ(static_cast<int64_t>(ids.size()), plan.completion_tokens());
    for (size_t i = 0; i < ids.size(); ++i) {
      EXPECT_GE(ids[i].get<int64_t>(), 0);
      EXPECT_LT(ids[i].get<int64_t>(), kVocabularySize);
      EXPECT_EQ(ids[i], TokenId(content[i]["token"].get<std::string>()));
    }
    EXPECT_EQ(static_cast<int64_t>(j["prompt_token_ids"].size()), r.prompt_tokens);
  }
}

TEST(LogprobsTest, MostTokensAreTheLikeliestAndValuesAreDeterministic) {
  int top1 = 0, total = 0;
  for (int i = 0; i < 2000; ++i) {
    TokenLogprob t = LogprobFor(7, i, " word", 3);
    ASSERT_EQ(t.top.size(), 3u);
    top1 += t.top[0].first == " word";
    ++total;
    EXPECT_EQ(LogprobFor(7, i, " word", 3).logprob, t.logprob);
    double mass = 0;
    for (const auto& alt : t.top) mass += std::exp(alt.second);
    EXPECT_LE(mass, 1.0 + 1e-6);
  }
  EXPECT_GT(top1, total * 7 / 10);
  EXPECT_LT(top1, total * 9 / 10);
}

// Chat logprobs entries and token ids of a stream sent in chunks of `step` tokens.
std::pair<Json, Json> StreamedLogprobs(const CompletionRequest& r, const CompletionPlan& plan, int64_t step,
                                       Json* prompt_ids) {
  StreamRenderer renderer(&r, &plan, {"id", 1});
  std::string sse;
  for (int64_t t = 0; t < plan.completion_tokens(); t += step)
    sse += renderer.Tokens(t, std::min(t + step, plan.completion_tokens()));
  sse += renderer.Finish();
  Json entries = Json::array(), ids = Json::array();
  for (const std::string& d : DataLines(sse)) {
    if (d == "[DONE]") continue;
    Json chunk = Json::parse(d);
    if (chunk.contains("prompt_token_ids")) *prompt_ids = chunk["prompt_token_ids"];
    if (chunk["choices"].empty()) continue;
    const Json& choice = chunk["choices"][0];
    if (choice.contains("prompt_token_ids")) *prompt_ids = choice["prompt_token_ids"];
    if (choice["logprobs"].is_null()) continue;
    if (r.kind == ApiKind::kChat) {
      for (const Json& e : choice["logprobs"]["content"]) entries.push_back(e);
    } else {
      if (entries.is_array()) entries = Json::object();
      for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
        for (const Json& e : choice["logprobs"][key]) entries[key].push_back(e);
    }
    for (const Json& id : choice["token_ids"]) ids.push_back(id);
  }
  return {entries, ids};
}

TEST(LogprobsTest, StreamChunksCarryTheSameLogprobsAsTheWholeResponse) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  const std::vector<std::string> bodies = {
      ChatBody({UserMessage(kQuestion)},
               {{"stream", true}, {"logprobs", true}, {"top_logprobs", 4}, {"return_token_ids", true}}),
      ChatBody({UserMessage("q")}, {{"stream", true},
                                    {"logprobs", true},
                                    {"top_logprobs", 2},
                                    {"return_token_ids", true},
                                    {"response_format", SchemaFormat(StructuredSchemas()[3])}}),
      // Tool calls: the argument pieces and one header token per call.
      ChatBody({UserMessage("q")},
               {{"stream", true}, {"logprobs", true}, {"return_token_ids", true}, {"tools", kTools}}),
  };
  for (const std::string& body : bodies) {
    CompletionRequest r = MustParse(body, c);
    CompletionPlan plan = PlanCompletion(r, c);
    Json whole = Json::parse(RenderCompletion(r, plan, {"id", 1}));
    for (int64_t step : {1, 3, 7}) {
      Json prompt_ids;
      auto [entries, ids] = StreamedLogprobs(r, plan, step, &prompt_ids);
      EXPECT_EQ(entries, whole["choices"][0]["logprobs"]["content"]) << "step " << step;
      EXPECT_EQ(ids, whole["choices"][0]["token_ids"]);
      EXPECT_EQ(prompt_ids, whole["prompt_token_ids"]);
    }
    EXPECT_EQ(static_cast<int64_t>(whole["choices"][0]["logprobs"]["content"].size()), plan.completion_tokens());
  }
}

TEST(LogprobsTest, TextCompletionsUseTheLegacyShape) {
  CompletionRequest r = MustParse(R"({"prompt":[1,2,3,4,5],"max_tokens":16,"logprobs":3,"return_token_ids":true})",
                                  SimConfig(), ApiKind::kText);
  EXPECT_EQ(r.top_logprobs, 3);
  CompletionPlan plan = PlanCompletion(r, SimConfig());
  Json j = Json::parse(RenderCompletion(r, plan, {"cmpl-1", 1}));
  const Json& choice = j["choices"][0];
  const Json& lp = choice["logprobs"];
  const size_t n = static_cast<size_t>(plan.completion_tokens());
  ASSERT_EQ(lp["tokens"].size(), n);
  ASSERT_EQ(lp["token_logprobs"].size(), n);
  ASSERT_EQ(lp["top_logprobs"].size(), n);
  ASSERT_EQ(lp["text_offset"].size(), n);
  std::string text;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(lp["text_offset"][i].get<size_t>(), text.size());
    text += lp["tokens"][i].get<std::string>();
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
    EXPECT_EQ(lp["top_logprobs"][i].size(), 3u);
  }
  EXPECT_EQ(text, plan.Text());
  EXPECT_EQ(choice["token_ids"].size(), n);
  EXPECT_EQ(choice["prompt_token_ids"], Json::parse("[1,2,3,4,5]"));  // the prompt's own ids
  // Streamed in chunks, the legacy arrays concatenate to the same.
  CompletionRequest streamed = r;
  streamed.stream = true;
  Json prompt_ids;
  auto [entries, ids] = StreamedLogprobs(streamed, plan, 3, &prompt_ids);
  EXPECT_EQ(entries, lp);
  EXPECT_EQ(ids, choice["token_ids"]);
  EXPECT_EQ(prompt_ids, choice["prompt_token_ids"]);
}

TEST(LogprobsTest, OutOfRangeRequestsAreRefused) {
  for (const Json& extra : {Json{{"logprobs", true}, {"top_logprobs", 21}}, Json{{"logprobs", true}, {"top_logprobs", -1}},
                            Json{{"top_logprobs", 2}}, Json{{"logprobs", 2}}, Json{{"return_token_ids", "yes"}}}) {
    auto r = ParseCompletionRequest(ApiKind::kChat, ChatBody({UserMessage("q")}, extra), SimConfig());
    EXPECT_FALSE(r.ok()) << extra.dump();
  }
  auto legacy = ParseCompletionRequest(ApiKind::kText, R"({"prompt":"x","logprobs":21})", SimConfig());
  ASSERT_FALSE(legacy.ok());
  EXPECT_NE(legacy.status().message().find("'logprobs'"), std::string::npos);
  auto ok = ParseCompletionRequest(ApiKind::kChat, ChatBody({UserMessage("q")}, {{"logprobs", true}, {"top_logprobs", 20}}),
                                   SimConfig());
  EXPECT_TRUE(ok.ok());
}

TEST(LogprobsTest, WithoutTheFieldsNothingChanges) {
  for (bool stream : {false, true}) {
    CompletionRequest r = MustParse(ChatBody({UserMessage(kQuestion)}, {{"stream", stream}, {"logprobs", false}}));
    CompletionPlan plan = PlanCompletion(r, SimConfig());
    Json j = Json::parse(RenderCompletion(r, plan, {"id", 1}));
    EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
    EXPECT_FALSE(j["choices"][0].contains("token_ids"));
    EXPECT_FALSE(j.contains("prompt_token_ids"));
    StreamRenderer renderer(&r, &plan, {"id", 1});
    std::string sse = renderer.Tokens(0, plan.completion_tokens()) + renderer.Finish();
    EXPECT_EQ(sse.find("token_ids"), std::string::npos);
    for (const std::string& d : DataLines(sse)) {
      if (d == "[DONE]") continue;
      Json chunk = Json::parse(d);
      if (!chunk["choices"].empty()) {
        EXPECT_TRUE(chunk["choices"][0]["logprobs"].is_null());
      }
    }
  }
}

// ------------------------------------------------------------ faults

TEST(FaultInjectorTest, ProbabilitiesAndPrecedence) {
  SimConfig none;
  FaultInjector quiet(none);
  for (int i = 0; i < 100; ++i) {
    FaultDecision d = quiet.Decide();
    EXPECT_FALSE(d.Immediate() || d.malformed || d.spike);
  }
  SimConfig all;
  all.fault_429 = all.fault_500 = all.fault_503 = all.fault_hang = all.fault_drop = 1.0;
  EXPECT_TRUE(FaultInjector(all).Decide().drop);
  all.fault_drop = 0;
  EXPECT_TRUE(FaultInjector(all).Decide().hang);
  all.fault_hang = 0;
  EXPECT_EQ(FaultInjector(all).Decide().http_status, 500);
  all.fault_500 = 0;
  EXPECT_EQ(FaultInjector(all).Decide().http_status, 503);
  all.fault_503 = 0;
  EXPECT_EQ(FaultInjector(all).Decide().http_status, 429);

  SimConfig some;
  some.fault_429 = 0.3;
  some.spike_prob = 0.1;
  FaultInjector a(some), b(some);
  int n429 = 0, spikes = 0;
  for (int i = 0; i < 10000; ++i) {
    FaultDecision x = a.Decide(), y = b.Decide();
    EXPECT_EQ(x.http_status, y.http_status);  // same seed, same sequence
    n429 += x.http_status == 429;
    spikes += x.spike;
  }
  EXPECT_NEAR(n429 / 10000.0, 0.3, 0.02);
  EXPECT_NEAR(spikes / 10000.0, 0.07, 0.02);  // spikes only on requests that are answered
}

}  // namespace
}  // namespace matrix::llm_sim
