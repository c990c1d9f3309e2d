// Component tests of matrix-llm-sim: start the real binary on 127.0.0.1:0,
// read its port file, and talk real HTTP to it (curl for single requests, the
// epoll load client for concurrency). Every server runs with --speed so the
// whole file stays fast.
#include <signal.h>

#include <gtest/gtest.h>

#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "common/base/files.h"
#include "common/base/json.h"
#include "test/daemons/llm_sim/load_client.h"
#include "test/support/test_util.h"

namespace matrix::llm_sim {
namespace {

using matrix::testing::BinPath;
using matrix::testing::ChildProcess;
using matrix::testing::RunCommand;
using matrix::testing::TempDir;
using matrix::testing::WaitUntil;

const char kQuestion[] = "Which planet is largest?\nA. Mercury\nB. Venus\nC. Jupiter\nD. Mars";

// A running matrix-llm-sim process.
class Sim {
 public:
  explicit Sim(const std::vector<std::string>& flags) {
    std::vector<std::string> argv = {BinPath("matrix-llm-sim"), "--listen", "127.0.0.1:0",
                                     "--port-file", dir_.File("port"), "--log-level", "warn"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    process_ = std::make_unique<ChildProcess>(argv, dir_.File("sim.log"));
    started_ = WaitUntil(
        [&] {
          auto content = ReadFile(dir_.File("port"));
          if (!content.ok() || content->empty()) return false;
          address_ = *content;
          return true;
        },
        10000);
  }

  bool started() const { return started_; }
  const std::string& address() const { return address_; }
  int port() const { return std::stoi(address_.substr(address_.rfind(':') + 1)); }
  std::string Url(const std::string& path) const { return "http://" + address_ + path; }
  ChildProcess* process() { return process_.get(); }
  const TempDir& dir() const { return dir_; }
  std::string Log() const {
    auto log = ReadFile(dir_.File("sim.log"));
    return log.ok() ? *log : "";
  }

  // curl -s with the given arguments; returns the exit code.
  int Curl(const std::string& args, std::string* out) const {
    out->clear();
    return RunCommand("curl -s --max-time 20 " + args, out);
  }
  // POSTs `body` as JSON to `path`; `extra` goes to curl before the URL.
  int Post(const std::string& path, const std::string& body, std::string* out,
           const std::string& extra = "") const {
    const std::string file = dir_.File("body-" + std::to_string(++bodies_) + ".json");
    EXPECT_TRUE(WriteFileAtomic(file, body).ok());
    return Curl(extra + " -H 'Content-Type: application/json' --data-binary @" + file + " " +
                    Url(path),
                out);
  }

 private:
  TempDir dir_;
  std::unique_ptr<ChildProcess> process_;
  std::string address_;
  bool started_ = false;
  mutable int bodies_ = 0;
};

std::string ChatBody(const std::string& content, const Json& extra = Json::object()) {
  Json body = extra;
  body["model"] = "sim";
  body["messages"] = Json::array({{{"role", "user"}, {"content", content}}});
  return body.dump();
}

// Status code from `curl -i` output (the last status line, after any 100 Continue).
int StatusOf(const std::string& response) {
  std::regex re(R"(HTTP/1\.1 (\d{3}))");
  int status = 0;
  for (auto it = std::sregex_iterator(response.begin(), response.end(), re);
       it != std::sregex_iterator(); ++it)
    status = std::stoi((*it)[1]);
  return status;
}

std::string BodyOf(const std::string& response) {
  size_t pos = response.rfind("\r\n\r\n");
  return pos == std::string::npos ? response : response.substr(pos + 4);
}

Json StatsOf(const Sim& sim) {
  std::string out;
  EXPECT_EQ(sim.Curl(sim.Url("/stats"), &out), 0);
  auto j = ParseJson(out, "stats");
  EXPECT_TRUE(j.ok()) << out;
  return j.ok() ? *j : Json();
}

#define ASSERT_STARTED(sim) ASSERT_TRUE((sim).started()) << (sim).Log()

TEST(LlmSimServerTest, ChatCompletionHasOpenAiShapeAndUsage) {
  Sim sim({"--speed", "20"});
  ASSERT_STARTED(sim);
  std::string out;
  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody(kQuestion, {{"max_tokens", 40}}), &out), 0);
  auto parsed = ParseJson(out, "response");
  ASSERT_TRUE(parsed.ok()) << out;
  const Json& j = *parsed;
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_TRUE(j["created"].is_number_integer());
  EXPECT_EQ(j["model"], "sim");
  ASSERT_EQ(j["choices"].size(), 1u);
  const Json& choice = j["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["message"]["role"], "assistant");
  const std::string content = choice["message"]["content"];
  EXPECT_TRUE(std::regex_search(content, std::regex(R"(The answer is \([A-D]\)\.$)"))) << content;
  EXPECT_TRUE(choice["finish_reason"] == "stop" || choice["finish_reason"] == "length");
  const Json& usage = j["usage"];
  EXPECT_EQ(usage["prompt_tokens"], (std::string(kQuestion).size() + 3) / 4);
  EXPECT_GE(usage["completion_tokens"].get<int>(), 6);
  EXPECT_LE(usage["completion_tokens"].get<int>(), 40);
  EXPECT_EQ(usage["total_tokens"], usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());

  // Same request, same text.
  std::string again;
  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody(kQuestion, {{"max_tokens", 40}}), &again), 0);
  EXPECT_EQ(Json::parse(again)["choices"][0]["message"]["content"], content);
}

TEST(LlmSimServerTest, StreamingSendsChunksAndEndsWithDone) {
  Sim sim({"--speed", "20"});
  ASSERT_STARTED(sim);
  std::string out;
  ASSERT_EQ(sim.Post("/v1/chat/completions",
                     ChatBody(kQuestion, {{"max_tokens", 25},
                                          {"stream", true},
                                          {"stream_options", {{"include_usage", true}}}}),
                     &out, "-N"),
            0);
  std::vector<std::string> data;
  std::regex line_re("data: ([^\n]*)\n\n");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), line_re); it != std::sregex_iterator(); ++it)
    data.push_back((*it)[1]);
  ASSERT_GE(data.size(), 5u) << out;
  EXPECT_EQ(data.back(), "[DONE]");
  std::string content, finish;
  int completion_tokens = -1;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    Json chunk = Json::parse(data[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (chunk.contains("usage")) {
      completion_tokens = chunk["usage"]["completion_tokens"];
      continue;
    }
    const Json& c = chunk["choices"][0];
    if (c["delta"].contains("content") && c["delta"]["content"].is_string())
      content += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  EXPECT_TRUE(std::regex_search(content, std::regex(R"(The answer is \([A-D]\)\.$)"))) << content;
  EXPECT_TRUE(finish == "stop" || finish == "length");
  EXPECT_GE(completion_tokens, 6);
}

TEST(LlmSimServerTest, TextCompletionsModelsHealthAndStats) {
  Sim sim({"--speed", "20", "--model-name", "llama-sim"});
  ASSERT_STARTED(sim);
  std::string out;
  ASSERT_EQ(sim.Post("/v1/completions", R"({"prompt":"The answer is (B). Right?","max_tokens":12,"temperature":0})", &out), 0);
  Json text = Json::parse(out);
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["model"], "llama-sim");
  EXPECT_NE(text["choices"][0]["text"].get<std::string>().find("The answer is (B)."), std::string::npos);

  ASSERT_EQ(sim.Curl(sim.Url("/v1/models"), &out), 0);
  Json models = Json::parse(out);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "llama-sim");
  EXPECT_EQ(models["data"][0]["object"], "model");

  ASSERT_EQ(sim.Curl("-i " + sim.Url("/health"), &out), 0);
  EXPECT_EQ(StatusOf(out), 200);
  EXPECT_EQ(BodyOf(out), "ok");

  Json stats = StatsOf(sim);
  EXPECT_GE(stats["requests_total"].get<int>(), 3);
  EXPECT_EQ(stats["requests_by_endpoint"]["/v1/completions"], 1);
  EXPECT_EQ(stats["requests_by_endpoint"]["/v1/models"], 1);
  EXPECT_GE(stats["responses_by_status"]["200"].get<int>(), 3);
  EXPECT_EQ(stats["tokens_out"], text["usage"]["completion_tokens"]);
  EXPECT_EQ(stats["tokens_in"], text["usage"]["prompt_tokens"]);
  EXPECT_EQ(stats["active_sequences"], 0);
  EXPECT_EQ(stats["queued"], 0);
  EXPECT_TRUE(stats["faults_injected"].contains("http_429"));
}

TEST(LlmSimServerTest, BadRequestsGet400And404And405) {
  Sim sim({"--speed", "20", "--max-model-len", "100"});
  ASSERT_STARTED(sim);
  std::string out;
  ASSERT_EQ(sim.Post("/v1/chat/completions", "{not json", &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 400);
  Json err = Json::parse(BodyOf(out));
  EXPECT_EQ(err["error"]["type"], "invalid_request_error");
  EXPECT_EQ(err["error"]["code"], 400);
  EXPECT_TRUE(err["error"]["message"].is_string());

  ASSERT_EQ(sim.Post("/v1/chat/completions", R"({"model":"sim"})", &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 400);
  EXPECT_NE(BodyOf(out).find("messages"), std::string::npos);

  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody(std::string(2000, 'a')), &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 400);
  EXPECT_NE(BodyOf(out).find("maximum context length"), std::string::npos) << out;

  ASSERT_EQ(sim.Curl("-i " + sim.Url("/v1/nothing"), &out), 0);
  EXPECT_EQ(StatusOf(out), 404);
  ASSERT_EQ(sim.Curl("-i " + sim.Url("/v1/chat/completions"), &out), 0);
  EXPECT_EQ(StatusOf(out), 405);

  // The server still answers after all that.
  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody("hi", {{"max_tokens", 8}}), &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 200);
  Json stats = StatsOf(sim);
  EXPECT_EQ(stats["responses_by_status"]["400"], 3);
  EXPECT_EQ(stats["responses_by_status"]["404"], 1);
}

TEST(LlmSimServerTest, StructuredOutputAndLogprobsOverHttp) {
  Sim sim({"--speed", "50"});
  ASSERT_STARTED(sim);
  const Json format = Json::parse(R"({"type":"json_schema","json_schema":{"name":"grade","strict":true,
      "schema":{"type":"object","properties":{"grade":{"enum":["A","B","C"]},"points":{"type":"integer","minimum":0,"maximum":10}},
                "required":["grade","points"],"additionalProperties":false}}})");
  std::string out;
  ASSERT_EQ(sim.Post("/v1/chat/completions",
                     ChatBody(kQuestion, {{"response_format", format},
                                          {"logprobs", true},
                                          {"top_logprobs", 3},
                                          {"return_token_ids", true}}),
                     &out),
            0);
  Json j = Json::parse(out);
  Json reply = Json::parse(j["choices"][0]["message"]["content"].get<std::string>());
  EXPECT_TRUE(reply["grade"] == "A" || reply["grade"] == "B" || reply["grade"] == "C") << reply;
  EXPECT_TRUE(reply["points"].is_number_integer()) << reply;
  const int64_t tokens = j["usage"]["completion_tokens"];
  EXPECT_EQ(static_cast<int64_t>(j["choices"][0]["logprobs"]["content"].size()), tokens);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 3u);
  EXPECT_EQ(static_cast<int64_t>(j["choices"][0]["token_ids"].size()), tokens);
  EXPECT_EQ(j["prompt_token_ids"].size(), j["usage"]["prompt_tokens"].get<size_t>());

  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody("hi", {{"response_format", {{"type", "yaml"}}}}), &out, "-i"),
            0);
  EXPECT_EQ(StatusOf(out), 400);
  EXPECT_NE(BodyOf(out).find("response_format.type"), std::string::npos) << out;
  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody("hi", {{"logprobs", true}, {"top_logprobs", 21}}), &out, "-i"),
            0);
  EXPECT_EQ(StatusOf(out), 400);
  EXPECT_NE(BodyOf(out).find("top_logprobs"), std::string::npos) << out;
}

TEST(LlmSimServerTest, LargeBodyWithExpectContinue) {
  Sim sim({"--speed", "20"});
  ASSERT_STARTED(sim);
  std::string out;
  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody(std::string(20000, 'q'), {{"max_tokens", 8}}),
                     &out, "-i -H 'Expect: 100-continue'"),
            0);
  EXPECT_NE(out.find("100 Continue"), std::string::npos);
  EXPECT_EQ(StatusOf(out), 200);
  EXPECT_EQ(Json::parse(BodyOf(out))["usage"]["prompt_tokens"], 5000);
}

TEST(LlmSimServerTest, Fault429CarriesRetryAfter) {
  Sim sim({"--speed", "20", "--fault-429", "1.0", "--retry-after-s", "2"});
  ASSERT_STARTED(sim);
  std::string out;
  ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody("hi"), &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 429);
  EXPECT_NE(out.find("Retry-After: 2\r\n"), std::string::npos) << out;
  Json err = Json::parse(BodyOf(out));
  EXPECT_EQ(err["error"]["code"], 429);
  Json stats = StatsOf(sim);
  EXPECT_EQ(stats["faults_injected"]["http_429"], 1);
  EXPECT_EQ(stats["responses_by_status"]["429"], 1);
}

TEST(LlmSimServerTest, Faults500And503) {
  Sim sim500({"--speed", "20", "--fault-500", "1.0"});
  Sim sim503({"--speed", "20", "--fault-503", "1.0"});
  ASSERT_STARTED(sim500);
  ASSERT_STARTED(sim503);
  std::string out;
  ASSERT_EQ(sim500.Post("/v1/chat/completions", ChatBody("hi"), &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 500);
  EXPECT_TRUE(Json::parse(BodyOf(out)).contains("error"));
  ASSERT_EQ(sim503.Post("/v1/completions", R"({"prompt":"x"})", &out, "-i"), 0);
  EXPECT_EQ(StatusOf(out), 503);
  // Non-completion endpoints are never faulted.
  ASSERT_EQ(sim500.Curl(sim500.Url("/health"), &out), 0);
  EXPECT_EQ(out, "ok");
}

TEST(LlmSimServerTest, FaultMalformedGives200WithUnusableBody) {
  Sim sim({"--speed", "20", "--fault-malformed", "1.0"});
  ASSERT_STARTED(sim);
  int invalid_json = 0, missing_choices = 0;
  for (int i = 0; i < 8; ++i) {
    std::string out;
    ASSERT_EQ(sim.Post("/v1/chat/completions", ChatBody("q" + std::to_string(i), {{"max_tokens", 8}}),
                       &out, "-i"),
              0);
    EXPECT_EQ(StatusOf(out), 200);
    auto j = ParseJson(BodyOf(out), "body");
    if (!j.ok()) {
      ++invalid_json;
    } else {
      EXPECT_FALSE(j->contains("choices")) << BodyOf(out);
      ++missing_choices;
    }
  }
  EXPECT_EQ(invalid_json + missing_choices, 8);
  EXPECT_GT(invalid_json, 0);
  EXPECT_GT(missing_choices, 0);
  EXPECT_EQ(StatsOf(sim)["faults_injected"]["malformed"], 8);
}

TEST(LlmSimServerTest, FaultDropAndHang) {
  Sim drop({"--speed", "20", "--fault-drop", "1.0"});
  Sim hang({"--speed", "20", "--fault-hang", "1.0"});
  ASSERT_STARTED(drop);
  ASSERT_STARTED(hang);
  std::string out;
  EXPECT_EQ(drop.Post("/v1/chat/completions", ChatBody("hi"), &out), 52);  // empty reply
  EXPECT_EQ(hang.Post("/v1/chat/completions", ChatBody("hi"), &out, "--max-time 0.5"), 28);  // timeout
  ASSERT_EQ(hang.Curl(hang.Url("/health"), &out), 0);
  EXPECT_EQ(out, "ok");
  EXPECT_EQ(StatsOf(drop)["faults_injected"]["drop"], 1);
  EXPECT_EQ(StatsOf(hang)["faults_injected"]["hang"], 1);
  // The hung connection is released once the client gives up.
  EXPECT_TRUE(WaitUntil([&] { return StatsOf(hang)["connections_open"] == 1; }, 5000));
}

TEST(LlmSimServerTest, ClientThatGivesUpLeavesTheEngine) {
  Sim sim({"--step-ms", "50", "--slots", "1"});
  ASSERT_STARTED(sim);
  std::string out;
  EXPECT_EQ(sim.Post("/v1/chat/completions", ChatBody("slow", {{"max_tokens", 500}, {"ignore_eos", true}}),
                     &out, "--max-time 0.3"),
            28);
  EXPECT_TRUE(WaitUntil(
      [&] {
        Json stats = StatsOf(sim);
        return stats["completions_cancelled"] == 1 && stats["active_sequences"] == 0;
      },
      5000));
}

TEST(LlmSimServerTest, WritesEndpointFileAndExitsZeroOnSigterm) {
  TempDir run_dir;
  Sim sim({"--speed", "20", "--run-dir", run_dir.path(), "--name", "sim0"});
  ASSERT_STARTED(sim);
  auto endpoint = WaitEndpointFile(run_dir.path(), "sim0", 5000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  EXPECT_EQ(*endpoint, "http://" + sim.address() + "/v1");
  sim.process()->Signal(SIGTERM);
  EXPECT_EQ(sim.process()->Wait(5000), 0) << sim.Log();
}

TEST(LlmSimServerTest, TwoThousandConcurrentKeepAliveConnections) {
  Sim sim({"--speed", "10"});
  ASSERT_STARTED(sim);
  testing::LoadOptions o;
  o.port = sim.port();
  o.connections = 2000;
  o.requests_per_connection = 2;
  o.body_for = [](int connection, int request) {
    return ChatBody(std::string(kQuestion) + "\nQuestion " + std::to_string(connection) + "." +
                        std::to_string(request),
                    {{"max_tokens", 16}});
  };
  o.timeout_ms = 30000;
  o.keep_bodies = true;
  auto result = testing::RunLoad(o);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->failed_connections, 0)
      << (result->error_samples.empty() ? "" : result->error_samples[0]);
  EXPECT_EQ(result->ok, 4000);
  EXPECT_EQ(result->peak_open, 2000);
  for (const std::string& body : result->bodies) {
    auto j = ParseJson(body, "body");
    ASSERT_TRUE(j.ok()) << body;
    ASSERT_EQ((*j)["choices"].size(), 1u);
  }
  Json stats = StatsOf(sim);
  EXPECT_EQ(stats["completions_finished"], 4000);
  EXPECT_GE(stats["connections_total"].get<int>(), 2000);
}

TEST(LlmSimServerTest, ManyConcurrentStreams) {
  Sim sim({"--speed", "10", "--slots", "64"});
  ASSERT_STARTED(sim);
  testing::LoadOptions o;
  o.port = sim.port();
  o.connections = 300;
  o.body = ChatBody(kQuestion, {{"max_tokens", 20}, {"stream", true}});
  o.timeout_ms = 30000;
  o.keep_bodies = true;
  auto result = testing::RunLoad(o);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->failed_connections, 0);
  EXPECT_EQ(result->ok, 300);
  for (const std::string& body : result->bodies) {
    ASSERT_GE(body.size(), 14u);
    EXPECT_EQ(body.substr(body.size() - 14), "data: [DONE]\n\n");
  }
}

}  // namespace
}  // namespace matrix::llm_sim
