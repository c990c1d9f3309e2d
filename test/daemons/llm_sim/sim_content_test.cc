// Unit tests of the content model (output lengths, determinism, the
// multiple-choice answer sentence, tool calls, request validation, rendering)
// and of the fault injector.
#include "daemons/llm_sim/sim_content.h"

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>

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
