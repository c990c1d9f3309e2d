// Component tests of tool environments: real sandboxed processes (bubblewrap)
// speaking MCP over stdio, driven through EnvPool and through the tool, exec
// and reward agents with a fake host.
#include "daemons/agent_worker/env_pool.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "common/base/files.h"
#include "common/config/pipeline_loader.h"
#include "common/sandbox/sandbox.h"
#include "test/daemons/agent_worker/fake_agent_host.h"
#include "test/support/test_util.h"

namespace matrix::worker {
namespace {

using matrix::testing::SourcePath;
using matrix::testing::TempDir;

bool Alive(int pid) { return pid > 0 && ::kill(pid, 0) == 0; }

class EnvPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::chmod(dir_.path().c_str(), 0711);  // sandboxes started by root run as nobody
    pool_ = MakePool(1000);
  }

  std::unique_ptr<EnvPool> MakePool(size_t max_sessions) {
    EnvPool::Options o;
    o.work_root = dir_.path() + "/envs";
    o.holder = "worker.test";
    o.max_sessions = max_sessions;
    return std::make_unique<EnvPool>(o, SystemClock::Get());
  }

  EnvSpec Probe(bool network = false, bool episode = false) {
    EnvSpec e;
    e.name = "probe";
    e.sandbox.kind = sandbox::Kind::kBwrap;
    e.sandbox.command = {"/usr/bin/python3", SourcePath("test/data/envs/probe_env.py")};
    if (episode) e.sandbox.command.push_back("--episode");
    e.sandbox.network = network;
    e.sandbox.limits.memory_mb = 512;
    e.sandbox.limits.max_processes = 16;
    e.call_timeout_s = 5;
    return e;
  }

  // Runs the pool's loop until `pred` or ~15 s.
  bool Pump(EnvPool& pool, const std::function<bool()>& pred, int timeout_ms = 15000) {
    for (int waited = 0; waited < timeout_ms; waited += 10) {
      if (pred()) return true;
      pollfd p{pool.fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
      pool.OnReadable();
      pool.Tick();
    }
    return pred();
  }

  std::string Session(EnvPool& pool, const EnvSpec& spec, const std::string& task = "t1") {
    std::optional<StatusOr<std::string>> got;
    pool.Acquire(spec, task, Json{{"row", task}}, 7, [&](StatusOr<std::string> s) { got = std::move(s); });
    EXPECT_TRUE(Pump(pool, [&] { return got.has_value(); }));
    if (!got || !got->ok()) {
      ADD_FAILURE() << "no session: " << (got ? got->status().ToString() : "timeout");
      return "";
    }
    return **got;
  }

  StatusOr<Json> CallTool(EnvPool& pool, const std::string& session, const std::string& name, Json args) {
    std::optional<StatusOr<Json>> got;
    pool.Call(session, "tools/call", {{"name", name}, {"arguments", std::move(args)}},
              [&](StatusOr<Json> r) { got = std::move(r); });
    EXPECT_TRUE(Pump(pool, [&] { return got.has_value(); }));
    return got ? *got : StatusOr<Json>(DeadlineExceeded("no reply"));
  }

  static std::string Text(const StatusOr<Json>& r) {
    if (!r.ok()) return r.status().ToString();
    const Json& c = r->is_object() && r->contains("content") ? (*r)["content"] : Json();
    return c.is_array() && !c.empty() && c[0].contains("text") ? c[0]["text"].get<std::string>() : r->dump();
  }
  static bool IsError(const StatusOr<Json>& r) { return r.ok() && r->is_object() && r->value("isError", false) == true; }

  TempDir dir_;
  std::unique_ptr<EnvPool> pool_;
};

// A program under /tmp (a checkout there) is shown read-only with its top
// folder under the sandbox's private /tmp; hidden paths are mounted after it,
// so showing never uncovers them.
TEST(SandboxArgvTest, AProgramUnderTmpStaysVisibleAndHiddenPathsStayHidden) {
  TempDir dir;  // /tmp/matrix-test-XXXXXX unless TMPDIR says otherwise
  if (dir.path().rfind("/tmp/", 0) != 0) GTEST_SKIP() << "TMPDIR is not /tmp";
  ASSERT_TRUE(WriteFileAtomic(dir.File("env.py"), "print()\n").ok());
  sandbox::Spec spec;
  spec.command = {"python3", dir.File("env.py")};
  spec.workdir = dir.File("work");
  spec.hide = {dir.File("keys")};
  const auto argv = sandbox::BuildArgv(spec);
  auto at = [&](const std::vector<std::string>& seq) {
    for (size_t i = 0; i + seq.size() <= argv.size(); ++i)
      if (std::equal(seq.begin(), seq.end(), argv.begin() + static_cast<long>(i))) return static_cast<long>(i);
    return -1L;
  };
  const long shown = at({"--ro-bind", dir.path(), dir.path()});
  const long hidden = at({"--tmpfs", dir.File("keys")});
  ASSERT_GE(shown, 0);
  ASSERT_GE(hidden, 0);
  EXPECT_LT(shown, hidden);
  EXPECT_GT(shown, at({"--tmpfs", "/tmp"}));
}

TEST_F(EnvPoolTest, SessionsKeepTheirOwnStateAndRunAsNobody) {
  std::string a = Session(*pool_, Probe()), b = Session(*pool_, Probe(), "t2");
  ASSERT_NE(a, b);
  EXPECT_EQ(Text(CallTool(*pool_, a, "count", Json::object())), "1");
  EXPECT_EQ(Text(CallTool(*pool_, a, "count", Json::object())), "2");
  EXPECT_EQ(Text(CallTool(*pool_, b, "count", Json::object())), "1");
  Json who = Json::parse(Text(CallTool(*pool_, a, "whoami", Json::object())));
  if (::geteuid() == 0) {
    EXPECT_EQ(who["uid"], 65534);  // started by root: dropped to nobody
  } else {
    EXPECT_EQ(who["uid"], static_cast<int>(::geteuid()));
  }
  EXPECT_EQ(pool_->live(), 2u);
  std::vector<int> pids = pool_->Pids();
  pool_->ReleaseAll();
  EXPECT_EQ(pool_->live(), 0u);
  // Their input closed, the servers exit on their own and are reaped.
  EXPECT_TRUE(Pump(*pool_, [&] { return pool_->Pids().empty(); }, 5000));
  for (int pid : pids) EXPECT_FALSE(Alive(pid)) << pid;
}

TEST_F(EnvPoolTest, EpisodeStartsFromTheInputRowWhenTheServerOffersIt) {
  std::string s = Session(*pool_, Probe(false, true), "row-9");
  EXPECT_TRUE(pool_->HasEpisode(s));
  Json who = Json::parse(Text(CallTool(*pool_, s, "whoami", Json::object())));
  EXPECT_EQ(who["episode"], (Json{{"row", "row-9"}}));
  std::string plain = Session(*pool_, Probe(), "row-10");
  EXPECT_FALSE(pool_->HasEpisode(plain));
}

TEST_F(EnvPoolTest, NoNetworkUnlessAllowed) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener, 16), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);

  std::string closed = Session(*pool_, Probe(false));
  auto denied = CallTool(*pool_, closed, "connect", {{"port", port}});
  EXPECT_TRUE(IsError(denied)) << Text(denied);
  EXPECT_NE(Text(denied).find("Connection refused"), std::string::npos) << Text(denied);

  std::string open = Session(*pool_, Probe(true), "t2");
  auto allowed = CallTool(*pool_, open, "connect", {{"port", port}});
  EXPECT_FALSE(IsError(allowed)) << Text(allowed);
  EXPECT_EQ(Text(allowed), "connected");
  ::close(listener);
}

TEST_F(EnvPoolTest, MemoryProcessAndFileLimitsHold) {
  std::string s = Session(*pool_, Probe());
  auto big = CallTool(*pool_, s, "alloc", {{"mb", 2048}});
  EXPECT_TRUE(IsError(big));
  EXPECT_NE(Text(big).find("MemoryError"), std::string::npos) << Text(big);
  auto forks = CallTool(*pool_, s, "fork", {{"n", 100}});
  EXPECT_TRUE(IsError(forks)) << Text(forks);
  EXPECT_NE(Text(forks).find("Resource temporarily unavailable"), std::string::npos) << Text(forks);
  // Still alive and answering after both.
  EXPECT_EQ(Text(CallTool(*pool_, s, "echo", {{"text", "ok"}})), "ok");
}

TEST_F(EnvPoolTest, ACallPastItsTimeLimitKillsTheWholeSandbox) {
  std::string s = Session(*pool_, Probe());
  std::vector<int> pids = pool_->Pids();
  ASSERT_EQ(pids.size(), 1u);
  auto start = std::chrono::steady_clock::now();
  auto r = CallTool(*pool_, s, "sleep", {{"seconds", 60}});
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_LT(took, 10.0);
  EXPECT_FALSE(pool_->Has(s));
  EXPECT_FALSE(Alive(pids[0]));
  // Nothing of the sandbox is left: no process works in this test's folders.
  std::string out;
  matrix::testing::RunCommand("for d in /proc/[0-9]*; do readlink $d/cwd; done 2>/dev/null | grep -F '" +
                                  dir_.path() + "' || true",
                              &out);
  EXPECT_EQ(out, "") << "sandbox processes left in: " << out;
}

TEST_F(EnvPoolTest, AProcessThatDiesFailsItsCallsWithHowItEnded) {
  std::string s = Session(*pool_, Probe());
  auto r = CallTool(*pool_, s, "exit", {{"code", 3}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("exit code 3"), std::string::npos) << r.status().ToString();
  EXPECT_NE(pool_->Why(s).find("exit code 3"), std::string::npos);

  // Killed from outside (kill -9 of its sandbox).
  std::string t = Session(*pool_, Probe(), "t2");
  std::optional<StatusOr<Json>> got;
  pool_->Call(t, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 3}}}},
              [&](StatusOr<Json> res) { got = std::move(res); });
  ::kill(pool_->Pids()[0], SIGKILL);
  ASSERT_TRUE(Pump(*pool_, [&] { return got.has_value(); }));
  ASSERT_FALSE(got->ok());
  EXPECT_NE(got->status().message().find("signal 9"), std::string::npos) << got->status().ToString();
}

TEST_F(EnvPoolTest, AcquisitionWaitsForAFreeSlot) {
  auto pool = MakePool(2);
  std::string a = Session(*pool, Probe(), "a");
  std::string b = Session(*pool, Probe(), "b");
  std::optional<StatusOr<std::string>> third;
  pool->Acquire(Probe(), "c", Json(nullptr), 1, [&](StatusOr<std::string> s) { third = std::move(s); });
  Pump(*pool, [&] { return third.has_value(); }, 500);
  EXPECT_FALSE(third.has_value());
  EXPECT_EQ(pool->waiting(), 1u);
  pool->Release(a);
  ASSERT_TRUE(Pump(*pool, [&] { return third.has_value(); }));
  EXPECT_TRUE(third->ok());
  EXPECT_EQ(pool->live(), 2u);
  EXPECT_EQ(pool->stats().peak_live, 2u);
}

TEST_F(EnvPoolTest, ToolsAreListedOnceAndCached) {
  std::optional<StatusOr<Json>> tools;
  pool_->ListTools(Probe(), [&](StatusOr<Json> t) { tools = std::move(t); });
  ASSERT_TRUE(Pump(*pool_, [&] { return tools.has_value(); }));
  ASSERT_TRUE(tools->ok()) << tools->status().ToString();
  EXPECT_EQ((*tools)->size(), 9u);
  int64_t started = pool_->stats().started;
  std::optional<StatusOr<Json>> again;
  pool_->ListTools(Probe(), [&](StatusOr<Json> t) { again = std::move(t); });
  EXPECT_TRUE(again.has_value());  // from the cache, at once
  EXPECT_EQ(pool_->stats().started, started);
  EXPECT_TRUE(Pump(*pool_, [&] { return pool_->Pids().empty(); }));  // the listing session is gone
}

TEST_F(EnvPoolTest, OneShotProgramsGetJsonAndTheirFailuresAreNamed) {
  EnvSpec e = Probe();
  e.sandbox.command = {"/usr/bin/python3", "-c",
                       "import json,sys; d=json.load(sys.stdin); print(json.dumps({'sum': d['a'] + d['b']}))"};
  std::optional<StatusOr<std::string>> out;
  pool_->RunOnce(e, R"({"a": 2, "b": 3})", [&](StatusOr<std::string> o) { out = std::move(o); });
  ASSERT_TRUE(Pump(*pool_, [&] { return out.has_value(); }));
  ASSERT_TRUE(out->ok()) << out->status().ToString();
  EXPECT_EQ(Json::parse(**out)["sum"], 5);

  e.sandbox.command = {"/usr/bin/python3", "-c", "x = bytearray(1 << 31)"};
  out.reset();
  pool_->RunOnce(e, "{}", [&](StatusOr<std::string> o) { out = std::move(o); });
  ASSERT_TRUE(Pump(*pool_, [&] { return out.has_value(); }));
  ASSERT_FALSE(out->ok());
  EXPECT_NE(out->status().message().find("MemoryError"), std::string::npos) << out->status().ToString();
}

// Published MCP servers, unchanged (installed by scripts/setup into build/npm).
class StockServerTest : public EnvPoolTest {
 protected:
  EnvSpec Server(const std::string& package) {
    std::string script = SourcePath("build/npm/node_modules/@modelcontextprotocol/" + package + "/dist/index.js");
    if (!FileExists(script)) ADD_FAILURE() << script << " is missing: scripts/setup debug installs it (npm)";
    EnvSpec e;
    e.name = package;
    e.sandbox.command = {"node", script};
    if (package == "server-everything") e.sandbox.command.push_back("stdio");
    e.sandbox.env = {{"MEMORY_FILE_PATH", "{workdir}/memory.json"}};
    e.sandbox.limits.memory_mb = 65536;  // V8 reserves address space for WebAssembly
    e.sandbox.limits.max_processes = 64;
    e.call_timeout_s = 20;
    e.start_timeout_s = 30;
    return e;
  }
};

TEST_F(StockServerTest, MemoryServerKeepsEachTasksGraphApart) {
  EnvSpec memory = Server("server-memory");
  std::string a = Session(*pool_, memory, "task-a");
  std::string b = Session(*pool_, memory, "task-b");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_FALSE(pool_->HasEpisode(a));  // a stock server: no episode extension
  Json alice = {{"entities", {{{"name", "alice"}, {"entityType", "person"}, {"observations", {"likes tea"}}}}}};
  auto created = CallTool(*pool_, a, "create_entities", alice);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_FALSE(IsError(created)) << Text(created);
  Json bob = {{"entities", {{{"name", "bob"}, {"entityType", "person"}, {"observations", {"likes coffee"}}}}}};
  ASSERT_FALSE(IsError(CallTool(*pool_, b, "create_entities", bob)));
  std::string graph_a = Text(CallTool(*pool_, a, "read_graph", Json::object()));
  std::string graph_b = Text(CallTool(*pool_, b, "read_graph", Json::object()));
  EXPECT_NE(graph_a.find("alice"), std::string::npos) << graph_a;
  EXPECT_EQ(graph_a.find("bob"), std::string::npos) << graph_a;
  EXPECT_NE(graph_b.find("bob"), std::string::npos) << graph_b;
  EXPECT_EQ(graph_b.find("alice"), std::string::npos) << graph_b;
}

TEST_F(StockServerTest, EverythingServerListsAndRunsItsTools) {
  EnvSpec everything = Server("server-everything");
  std::optional<StatusOr<Json>> tools;
  pool_->ListTools(everything, [&](StatusOr<Json> t) { tools = std::move(t); });
  ASSERT_TRUE(Pump(*pool_, [&] { return tools.has_value(); }));
  ASSERT_TRUE(tools->ok()) << tools->status().ToString();
  std::set<std::string> names;
  for (const auto& t : **tools) names.insert(t["name"].get<std::string>());
  ASSERT_TRUE(names.count("echo")) << (*tools)->dump();
  std::string s = Session(*pool_, everything);
  auto echoed = CallTool(*pool_, s, "echo", {{"message", "hello tools"}});
  ASSERT_TRUE(echoed.ok()) << echoed.status().ToString();
  EXPECT_NE(Text(echoed).find("hello tools"), std::string::npos) << Text(echoed);
  // A wrong call is an answer the model sees, not a dead session.
  auto wrong = CallTool(*pool_, s, "no-such-tool", Json::object());
  EXPECT_TRUE(!wrong.ok() ? wrong.status().code() == StatusCode::kInvalidArgument : IsError(wrong))
      << (wrong.ok() ? wrong->dump() : wrong.status().ToString());
  EXPECT_TRUE(pool_->Has(s));
}

// The tool and reward agents on a pipeline with the probe environment.
class ToolAgentTest : public EnvPoolTest {
 protected:
  void SetUp() override {
    EnvPoolTest::SetUp();
    std::ofstream(dir_.File("data.jsonl")) << R"({"q": 1})" << "\n";
    std::ofstream(dir_.File("p.yaml")) << R"(
dataset: {path: data.jsonl}
models: {m: {endpoints: [sim], model: x}}
roles:
  agent: {type: llm, model: m, tools_from: env, prompt: "hi"}
  env:
    type: tool
    command: [/usr/bin/python3, )" + SourcePath("test/data/envs/probe_env.py") + R"(, --episode]
    timeout_s: 5
    max_tool_calls: 5
  score: {type: reward, env: env, agent: agent, termination: "'user_stop'"}
flow:
  start: agent
  steps:
    agent: {role: agent, next: tools}
    tools: {role: env, next: score}
    score: {role: score}
)";
    auto p = config::LoadPipelineOrError(dir_.File("p.yaml"));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    pipeline_ = std::move(*p);
    task_.task_id = "task-1";
    task_.input.text = R"({"q": 1})";
  }
  void AddCalls(std::vector<wire::ToolCall> calls) {
    wire::Turn t;
    t.role = "agent";
    t.step = "agent";
    t.kind = "llm";
    t.tool_calls = std::move(calls);
    task_.history.push_back(t);
  }
  // Runs `step` until the agent completes.
  StepOutcome Run(FakeAgentHost& host, const std::string& step) {
    size_t before = host.outcomes.size();
    host.RunStep(step);
    EXPECT_TRUE(Pump(*pool_, [&] { return host.outcomes.size() > before; }));
    return host.outcomes.size() > before ? host.last() : StepOutcome::Failed("timeout", "");
  }

  config::Pipeline pipeline_;
  wire::Task task_;
};

TEST_F(ToolAgentTest, EveryCallBecomesAToolMessageErrorsIncluded) {
  FakeAgentHost host(pipeline_, &task_);
  host.AttachEnvs(pool_.get());
  AddCalls({{"c1", "count", "{}"}, {"c2", "echo", "{not json"}, {"c3", "no_such_tool", "{}"}, {"c4", "count", "{}"}});
  StepOutcome out = Run(host, "tools");
  ASSERT_EQ(out.kind, StepOutcome::Kind::kContinue) << out.reason << " " << out.error;
  ASSERT_EQ(task_.history.size(), 5u);
  EXPECT_EQ(task_.history[1].tool_call_id, "c1");
  EXPECT_EQ(task_.history[1].content.text, "1");
  EXPECT_NE(task_.history[2].content.text.find("not a valid JSON object"), std::string::npos);
  EXPECT_NE(task_.history[3].content.text.find("Unknown tool: no_such_tool"), std::string::npos);
  EXPECT_EQ(task_.history[4].content.text, "2");  // the same session: state kept
  EXPECT_EQ(task_.counters["tool_calls"], 4);
  EXPECT_EQ(task_.counters["tool_errors"], 2);
  ASSERT_EQ(task_.leases.size(), 1u);
  EXPECT_EQ(task_.leases[0].kind, "env:env");
  EXPECT_EQ(task_.leases[0].holder, "worker.test");

  // The next tool step of the task finds the same session.
  AddCalls({{"c5", "count", "{}"}});
  ASSERT_EQ(Run(host, "tools").kind, StepOutcome::Kind::kContinue);
  EXPECT_EQ(task_.history.back().content.text, "3");
  EXPECT_EQ(task_.leases.size(), 1u);

  // The environment's reward sees the trajectory.
  ASSERT_EQ(Run(host, "score").kind, StepOutcome::Kind::kContinue);
  EXPECT_EQ(VarValue(task_, "reward"), 3.0);
  EXPECT_EQ(VarValue(task_, "reward_info")["messages"], 7);

  // One more call would pass max_tool_calls (5).
  AddCalls({{"c6", "count", "{}"}});
  StepOutcome over = Run(host, "tools");
  EXPECT_EQ(over.kind, StepOutcome::Kind::kFailed);
  EXPECT_EQ(over.reason, "max_tool_calls");
}

TEST_F(ToolAgentTest, AnEnvironmentThatDiesEndsTheTaskWithEnvError) {
  FakeAgentHost host(pipeline_, &task_);
  host.AttachEnvs(pool_.get());
  AddCalls({{"c1", "count", "{}"}});
  ASSERT_EQ(Run(host, "tools").kind, StepOutcome::Kind::kContinue);
  ::kill(pool_->Pids()[0], SIGKILL);
  ASSERT_TRUE(Pump(*pool_, [&] { return pool_->live() == 0; }));
  AddCalls({{"c2", "count", "{}"}});
  StepOutcome out = Run(host, "tools");
  EXPECT_EQ(out.kind, StepOutcome::Kind::kFailed);
  EXPECT_EQ(out.reason, "env_error");
  EXPECT_NE(out.error.find("signal 9"), std::string::npos) << out.error;

  // A session held by another worker: the task is lost with it, not failed.
  task_.leases = {{"env:env", "other/1", "worker.gone", 0}};
  StepOutcome lost = Run(host, "tools");
  EXPECT_EQ(lost.kind, StepOutcome::Kind::kLost);
  EXPECT_EQ(lost.reason, "env_lost");
}

TEST_F(ToolAgentTest, TheLlmRoleOffersTheEnvironmentsToolsAndToolChoice) {
  FakeAgentHost host(pipeline_, &task_);
  host.AttachEnvs(pool_.get());
  host.RunStep("agent");
  ASSERT_TRUE(Pump(*pool_, [&] { return !host.llm_calls.empty(); }));
  const Json& body = host.llm_calls[0].second;
  ASSERT_TRUE(body["tools"].is_array());
  EXPECT_EQ(body["tools"].size(), 9u);
  EXPECT_EQ(body["tools"][0]["type"], "function");
  EXPECT_EQ(body["tools"][0]["function"]["name"], "echo");
  EXPECT_EQ(body["tools"][0]["function"]["parameters"]["required"][0], "text");
  llm::ChatResult res;
  res.content = "";
  res.tool_calls = Json::parse(R"([{"id":"a","type":"function","function":{"name":"echo","arguments":"{\"text\":\"x\"}"}},
                                   {"id":"b","type":"function","function":{"name":"count","arguments":"{}"}}])");
  host.AnswerLlm(res);
  ASSERT_EQ(host.last().kind, StepOutcome::Kind::kContinue);
  ASSERT_EQ(task_.history.back().tool_calls.size(), 2u);
  EXPECT_EQ(task_.history.back().tool_calls[1].name, "count");
}

}  // namespace
}  // namespace matrix::worker
