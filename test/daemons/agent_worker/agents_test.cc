// Unit tests of the built-in agents and flow routing on the Coral pipeline.
#include "daemons/agent_worker/agents.h"
#include "daemons/agent_worker/task_view.h"
#include "test/daemons/agent_worker/fake_agent_host.h"

#include <gtest/gtest.h>

#include "common/config/pipeline_loader.h"
#include "test/support/test_util.h"

namespace matrix::worker {
namespace {

class CoralAgentsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = config::LoadPipelineOrError(matrix::testing::SourcePath("configs/coral.yaml"));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    pipeline_ = std::move(*p);
    task_.input.text = R"({"question": "2+2?", "options": ["3", "4", "5"], "answer": "B"})";
  }
  void AddTurn(const std::string& role, const std::string& text, bool conversation = true) {
    wire::Turn t;
    t.role = role;
    t.step = role;
    t.kind = "llm";
    t.conversation = conversation;
    t.content.text = text;
    task_.history.push_back(t);
  }
  Json Ctx() { return BuildContext(task_, {}); }
  // Runs the role of `step` through the agent registry; the outcome.
  StepOutcome RunRole(const std::string& step) {
    FakeAgentHost host(pipeline_, &task_);
    host.RunStep(step);
    EXPECT_EQ(host.outcomes.size(), 1u);
    return host.outcomes.empty() ? StepOutcome::Failed("none", "no outcome") : host.last();
  }

  config::Pipeline pipeline_;
  wire::Task task_;
};

TEST_F(CoralAgentsTest, ExtractTakesTheLastAnswerLetter) {
  AddTurn("teacher", "First (A) seemed right. The answer is (A). On reflection the answer is (B).");
  AddTurn("extractor", "The answer is (B).", false);
  StepOutcome out = RunRole("parse_teacher");
  ASSERT_EQ(out.kind, StepOutcome::Kind::kContinue) << out.error;
  EXPECT_EQ(VarValue(task_, "teacher_answer"), "B");
}

TEST_F(CoralAgentsTest, CompareAndRouteStopAtAgreement) {
  SetVar(task_, "teacher_answer", "B");
  SetVar(task_, "student_answer", "B");
  ASSERT_EQ(RunRole("agree").kind, StepOutcome::Kind::kContinue);
  EXPECT_EQ(VarValue(task_, "agreement"), true);
  RouteDecision d = Route(*pipeline_.Step("agree"), task_, Ctx());
  EXPECT_EQ(d.target, "graded");
  EXPECT_EQ(d.reason, "agreement");
  RouteDecision g = Route(*pipeline_.Step("graded"), task_, Ctx());
  EXPECT_EQ(g.target, "done");
  EXPECT_EQ(VarValue(task_, "correct"), true);
}

TEST_F(CoralAgentsTest, DisagreementLoopsUntilTwentyTurns) {
  SetVar(task_, "teacher_answer", "A");
  SetVar(task_, "student_answer", "C");
  ASSERT_EQ(RunRole("agree").kind, StepOutcome::Kind::kContinue);
  EXPECT_EQ(Route(*pipeline_.Step("agree"), task_, Ctx()).target, "teacher");
  task_.counters["turns"] = 20;
  RouteDecision d = Route(*pipeline_.Step("agree"), task_, Ctx());
  EXPECT_EQ(d.target, "graded");
  EXPECT_EQ(d.reason, "max_turns");
  Route(*pipeline_.Step("graded"), task_, Ctx());
  EXPECT_EQ(VarValue(task_, "correct"), false);
}

TEST_F(CoralAgentsTest, ChatBodyShowsOwnTurnsAsAssistantAndOthersAsUser) {
  AddTurn("teacher", "I think 4. The answer is (B).");
  AddTurn("extractor", "The answer is (B).", false);
  AddTurn("student", "Maybe 5? The answer is (C).");
  AddTurn("teacher", "No, 4. The answer is (B).");
  auto built = BuildChatBody(pipeline_, "student", *pipeline_.Role("student"), task_, {}, Ctx());
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  const Json body = built->ToJson();
  const Json& m = body["messages"];
  ASSERT_EQ(m.size(), 5u);  // system, question, teacher, own, teacher; the extractor is not shown
  EXPECT_EQ(m[0]["role"], "system");
  EXPECT_EQ(m[1]["role"], "user");
  EXPECT_NE(m[1]["content"].get<std::string>().find("B. 4"), std::string::npos) << m[1]["content"];
  EXPECT_EQ(m[2]["role"], "user");
  EXPECT_EQ(m[3]["role"], "assistant");
  EXPECT_EQ(m[4]["role"], "user");
  EXPECT_EQ(body["temperature"], 0.7);
  EXPECT_TRUE(body.contains("seed"));
  // The extractor sees only its prompt, built from the last conversation turn.
  auto ext = BuildChatBody(pipeline_, "extractor", *pipeline_.Role("extractor"), task_, {}, Ctx());
  ASSERT_TRUE(ext.ok());
  ASSERT_EQ(ext->ToJson()["messages"].size(), 1u);
  EXPECT_NE(ext->ToJson()["messages"][0]["content"].get<std::string>().find("No, 4."), std::string::npos);
  EXPECT_EQ(ext->params["temperature"], 0);
}

TEST_F(CoralAgentsTest, PromptsThatReadOnlyTheInputAreRenderedOncePerTask) {
  PromptMemo prompts;
  AddTurn("teacher", "I think 4. The answer is (B).");
  auto first = BuildChatBody(pipeline_, "student", *pipeline_.Role("student"), task_, {}, Ctx(), &prompts);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  // The system prompt and the question are kept; a context with another
  // input (which a task never has) shows that they were not rendered again.
  EXPECT_EQ(prompts.size(), 2u);
  for (const auto& [tmpl, text] : prompts) EXPECT_TRUE(text.has_value());
  Json other = Ctx();
  other["input"]["question"] = "3+3?";
  AddTurn("student", "Maybe 5? The answer is (C).");
  auto again = BuildChatBody(pipeline_, "student", *pipeline_.Role("student"), task_, {}, other, &prompts);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToJson()["messages"][1], first->ToJson()["messages"][1]);
  EXPECT_EQ(again->ToJson()["messages"].size(), first->ToJson()["messages"].size() + 1);
  // The extractor's prompt reads the last turn: rendered at every step.
  auto ext = BuildChatBody(pipeline_, "extractor", *pipeline_.Role("extractor"), task_, {}, Ctx(), &prompts);
  ASSERT_TRUE(ext.ok());
  EXPECT_NE(ext->ToJson()["messages"][0]["content"].get<std::string>().find("Maybe 5?"), std::string::npos);
  AddTurn("teacher", "No, 4. The answer is (B).");
  ext = BuildChatBody(pipeline_, "extractor", *pipeline_.Role("extractor"), task_, {}, Ctx(), &prompts);
  ASSERT_TRUE(ext.ok());
  EXPECT_NE(ext->ToJson()["messages"][0]["content"].get<std::string>().find("No, 4."), std::string::npos);
  const config::RoleConfig& extractor = *pipeline_.Role("extractor");
  ASSERT_TRUE(prompts.count(&*extractor.prompt));
  EXPECT_FALSE(prompts.at(&*extractor.prompt).has_value());
}

TEST(ContextPartsTest, ReadsOnlyWhatAnExpressionNames) {
  EXPECT_EQ(ContextPartsFor("counters.steps >= 100"), static_cast<unsigned>(kCtxCounters));
  EXPECT_EQ(ContextPartsFor("vars.a == input.answer"), static_cast<unsigned>(kCtxVars | kCtxInput));
  EXPECT_EQ(ContextPartsFor("last.content =~ 'x'"), static_cast<unsigned>(kCtxLast));
  EXPECT_EQ(ContextPartsFor("last_turn.content"), static_cast<unsigned>(kCtxLastTurn));
  EXPECT_EQ(ContextPartsFor("history | length"), static_cast<unsigned>(kCtxHistory));
  EXPECT_EQ(ContextPartsFor("vars.last_answer"), static_cast<unsigned>(kCtxVars));
}

// last and last_turn are read from the turns a task carries when they are
// there; anything else that reads turns needs the archived history.
TEST(ContextPartsTest, TheArchiveIsLoadedOnlyWhenTheCarriedTurnsDoNotSuffice) {
  wire::Task task;
  EXPECT_FALSE(ReadsArchive(task, kCtxHistory | kCtxTurns));  // nothing archived
  task.archive.push_back(wire::ObjectRef{"node-0", 7, 100, 0});
  EXPECT_TRUE(ReadsArchive(task, kCtxHistory));
  EXPECT_TRUE(ReadsArchive(task, kCtxTurns));
  EXPECT_TRUE(ReadsArchive(task, kCtxLastTurn));
  EXPECT_FALSE(ReadsArchive(task, kCtxInput | kCtxVars));
  wire::Turn extractor;
  extractor.conversation = false;
  task.history.push_back(extractor);
  EXPECT_FALSE(ReadsArchive(task, kCtxLastTurn));
  EXPECT_TRUE(ReadsArchive(task, kCtxLast));  // the newest conversation turn is archived
  wire::Turn spoken;
  spoken.conversation = true;
  task.history.insert(task.history.begin(), spoken);
  EXPECT_FALSE(ReadsArchive(task, kCtxLast | kCtxLastTurn));
}

// Only the newest turns are built for last and last_turn.
TEST(ContextPartsTest, LastAndLastTurnAreTheNewestConversationTurnAndTheNewestTurn) {
  wire::Task task;
  wire::Turn a, b;
  a.conversation = true;
  a.content.text = "spoken";
  b.conversation = false;
  b.content.text = "aside";
  task.history = {a, b};
  Json ctx = BuildContext(task, Resolved(), kCtxLast | kCtxLastTurn);
  EXPECT_EQ(ctx["last"]["content"], "spoken");
  EXPECT_EQ(ctx["last_turn"]["content"], "aside");
  EXPECT_FALSE(ctx.contains("history"));
  EXPECT_EQ(BuildContext(wire::Task(), Resolved(), kCtxLast)["last"], nullptr);
}

// The record line embeds a one-line JSON input as it is, writes the spans by
// hand, and parses to the expected values; anything else goes through the
// JSON library.
TEST(RecordLineTest, ParsesToTheRecordWithSpansAndInput) {
  wire::Task t;
  t.task_id = "q1.t0";
  t.status = wire::TaskStatus::kDone;
  t.reason = "agreement";
  t.input.text = R"({"question":"2+2?","options":["3","4"]})";
  t.counters["steps"] = 2;
  wire::Span a;
  a.step = "ping";
  a.role = "ping";
  a.worker = "w\"0\u00e9";  // a quote and a non-ASCII character need escaping
  a.enqueue_us = 1'000'000;
  a.start_us = 1'000'250;
  a.end_us = 1'001'250;
  a.endpoint = "http://h:1/v1";
  a.attempt = 1;
  wire::Span b = a;
  b.start_us = a.enqueue_us - 1'500'007;  // clocks of two nodes disagree
  b.end_us = b.start_us + 12'345'678'901;
  t.spans = {a, b};
  const std::string line = RecordLine(t, {}, 2'000'000);
  EXPECT_NE(line.find("\"queue_wait_s\":0.000250,\"handling_s\":0.001000"), std::string::npos) << line;
  EXPECT_NE(line.find("\"queue_wait_s\":-1.500007,\"handling_s\":12345.678901"), std::string::npos) << line;
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find(t.input.text), std::string::npos) << "input embedded as it is";
  Json r = Json::parse(line);
  EXPECT_EQ(r["task_id"], "q1.t0");
  EXPECT_EQ(r["status"], "done");
  EXPECT_EQ(r["input"]["options"][1], "4");
  EXPECT_EQ(r["counters"]["steps"], 2);
  ASSERT_EQ(r["spans"].size(), 2u);
  EXPECT_EQ(r["spans"][0]["worker"], "w\"0\u00e9");
  EXPECT_EQ(r["spans"][0]["enqueue_us"], 1'000'000);
  EXPECT_DOUBLE_EQ(r["spans"][0]["queue_wait_s"].get<double>(), 0.00025);
  EXPECT_DOUBLE_EQ(r["spans"][0]["handling_s"].get<double>(), 0.001);
  EXPECT_EQ(r["spans"][1]["endpoint"], "http://h:1/v1");
  EXPECT_EQ(r["spans"][1]["attempt"], 1);
  EXPECT_DOUBLE_EQ(r["duration_s"].get<double>(), 2.0);

  // Input that is not JSON, or spans lines: re-encoded, still one line.
  t.input.text = "plain text\nwith a newline";
  Json plain = Json::parse(RecordLine(t, {}, 2'000'000));
  EXPECT_EQ(plain["input"], "plain text\nwith a newline");
  t.input.text = "{\"a\":\n1}";
  const std::string multi = RecordLine(t, {}, 2'000'000);
  EXPECT_EQ(multi.find('\n'), std::string::npos);
  EXPECT_EQ(Json::parse(multi)["input"]["a"], 1);
  t.spans.clear();
  EXPECT_TRUE(Json::parse(RecordLine(t, {}, 2'000'000))["spans"].empty());
}

// The record's fields are written by hand too: exactly what a Json object of
// the same fields prints (sorted keys, compact, escaped), turns with every
// field, vars that are JSON as values and others as strings, one line.
TEST(RecordLineTest, TurnsVarsAndCountersAreWhatTheJsonLibraryWouldPrint) {
  wire::Task t;
  t.task_id = "q\"7\".t0";
  t.run_id = "run";
  t.pipeline = "coral";
  t.status = wire::TaskStatus::kFailed;
  t.reason = "llm_error";
  t.error = "step 'x': bad \xff byte";  // invalid UTF-8 from outside
  t.input.text = R"({"q":1})";
  t.created_us = 1'000'000;
  t.counters["turns"] = 2;
  t.counters["we\"ird"] = -3;
  t.vars["answer"] = "\"B\"";
  t.vars["list"] = "[1,2.5,{\"a\":null}]";
  t.vars["multi"] = "{\"a\":\n1}";
  t.vars["not_json"] = "plain \u00e9";
  wire::Turn a;
  a.step = "teacher";
  a.role = "teacher";
  a.kind = "llm";
  a.conversation = true;
  a.content.text = "Line one\nThe answer is (B) \"quoted\" \u00e9\t";
  a.finish_reason = "stop";
  a.prompt_tokens = 10;
  a.completion_tokens = 20;
  a.endpoint = "http://h:1/v1";
  a.model = "m";
  a.start_us = 5;
  a.end_us = 9;
  a.attempts = 2;
  a.extra = R"({"format_retries":1,"logprobs":[-0.5,null]})";
  wire::Turn b;
  b.kind = "tool";
  b.tool_call_id = "call_1";
  b.content.ref = wire::ObjectRef{};
  b.content.ref->id = 42;  // not resolved: null content and the reason
  wire::ToolCall call;
  call.id = "call_1";
  call.name = "lookup";
  call.arguments = "{\"id\": 3}";
  b.tool_calls = {call};
  t.history = {a, b};
  const std::string line = RecordLine(t, {}, 3'500'000);
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  Json r = Json::parse(line);
  const std::string head = line.substr(0, line.find(",\"input\":"));
  Json without = r;
  without.erase("input");
  without.erase("spans");
  std::string expected = DumpJson(without);
  expected.pop_back();
  EXPECT_EQ(head, expected);
  EXPECT_EQ(r["task_id"], "q\"7\".t0");
  EXPECT_EQ(r["counters"]["we\"ird"], -3);
  EXPECT_EQ(r["vars"]["answer"], "B");
  EXPECT_EQ(r["vars"]["list"][2]["a"], nullptr);
  EXPECT_EQ(r["vars"]["multi"]["a"], 1);
  EXPECT_EQ(r["vars"]["not_json"], "plain \u00e9");
  EXPECT_EQ(r["usage"]["prompt_tokens"], 10);
  EXPECT_EQ(r["usage"]["completion_tokens"], 20);
  EXPECT_DOUBLE_EQ(r["duration_s"].get<double>(), 2.5);
  ASSERT_EQ(r["turns"].size(), 2u);
  EXPECT_EQ(r["turns"][0]["content"], a.content.text);
  EXPECT_EQ(r["turns"][0]["extra"]["logprobs"][0], -0.5);
  EXPECT_EQ(r["turns"][0]["attempts"], 2);
  EXPECT_EQ(r["turns"][0]["conversation"], true);
  EXPECT_EQ(r["turns"][1]["content"], nullptr);
  EXPECT_EQ(r["turns"][1]["content_error"], "object 42 unavailable");
  EXPECT_EQ(r["turns"][1]["tool_call_id"], "call_1");
  EXPECT_EQ(r["turns"][1]["tool_calls"][0]["arguments"], "{\"id\": 3}");
  EXPECT_FALSE(r["turns"][1].contains("extra"));
  // The record of a dropped task: the same head, no turns.
  Json dropped = Json::parse(DroppedRecordLine(t, 3'500'000));
  EXPECT_FALSE(dropped.contains("turns"));
  EXPECT_EQ(dropped["vars"], r["vars"]);
  EXPECT_EQ(dropped["error"], r["error"]);
}

}  // namespace
}  // namespace matrix::worker
