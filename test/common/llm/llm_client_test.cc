// Component tests for LlmClient against real HTTP servers on loopback: the
// scripted TestHttpServer (precise control of statuses, headers, delays and
// dropped connections) and, when it has been built, matrix-llm-sim.
#include "common/llm/llm_client.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "common/base/log.h"
#include "test/common/llm/test_http_server.h"
#include "test/support/test_util.h"

namespace matrix::llm {
namespace {

using test::CompletionBody;
using test::HttpReply;
using test::HttpRequest;
using test::TestHttpServer;

PoolConfig MakePool(std::vector<std::string> urls, const std::string& name = "m") {
  PoolConfig p;
  p.name = name;
  p.endpoints = std::move(urls);
  p.model = "test-model";
  p.timeout_s = 10;
  p.connect_timeout_s = 2;
  p.max_retries = 4;
  p.backoff_base_s = 0.01;
  p.backoff_max_s = 0.05;
  return p;
}

ChatRequest MakeRequest(uint64_t tag, const std::string& pool = "m",
                        const std::string& sticky = "") {
  ChatRequest r;
  r.tag = tag;
  r.pool = pool;
  r.body = {
      {"messages", Json::array({{{"role", "user"}, {"content", "hello " + std::to_string(tag)}}})},
      {"max_tokens", 16},
      {"temperature", 0.5}};
  r.sticky_key = sticky;
  return r;
}

std::unique_ptr<LlmClient> MakeClient(std::vector<PoolConfig> pools,
                                      const Clock* clock = SystemClock::Get()) {
  auto c = LlmClient::Create(std::move(pools), clock);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

// Waits on notify_fd the way the worker's loop does, until `n` results arrived
// or `timeout_ms` passed.
std::vector<ChatResult> WaitResults(LlmClient& client, size_t n, int timeout_ms = 20000) {
  std::vector<ChatResult> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (out.size() < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) break;
    pollfd p{client.notify_fd(), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(left));
    client.Drain(&out);
  }
  return out;
}

ChatResult WaitOne(LlmClient& client, int timeout_ms = 20000) {
  auto results = WaitResults(client, 1, timeout_ms);
  EXPECT_EQ(results.size(), 1u);
  return results.empty() ? ChatResult{} : std::move(results[0]);
}

HttpReply Ok(const std::string& content = "hi there", int delay_ms = 0) {
  return HttpReply::Respond(200, CompletionBody(content), delay_ms);
}

int64_t GapMs(const HttpRequest& a, const HttpRequest& b) {
  return (b.received_ns - a.received_ns) / 1'000'000;
}

LlmClient::EndpointStats StatsFor(const LlmClient& client, const std::string& url) {
  for (const auto& s : client.Stats())
    if (s.url == url) return s;
  ADD_FAILURE() << "no stats for " << url;
  return {};
}

TEST(LlmClientTest, CompletesRequestAndFillsModel) {
  TestHttpServer server([](const HttpRequest&) { return Ok("The answer is 4."); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(7));
  ChatResult r = WaitOne(*client);

  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.tag, 7u);
  EXPECT_EQ(r.http_status, 200);
  EXPECT_EQ(r.content, "The answer is 4.");
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.prompt_tokens, 7);
  EXPECT_EQ(r.completion_tokens, 3);
  EXPECT_TRUE(r.tool_calls.is_null());
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.endpoint, server.base_url());
  EXPECT_GT(r.latency_ns, 0);
  EXPECT_EQ(r.raw["usage"]["total_tokens"], 10);

  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].path, "/v1/chat/completions");
  EXPECT_EQ(reqs[0].headers["content-type"], "application/json");
  EXPECT_EQ(reqs[0].headers.count("authorization"), 0u);
  Json sent = Json::parse(reqs[0].body);
  EXPECT_EQ(sent["model"], "test-model");
  EXPECT_EQ(sent["messages"][0]["content"], "hello 7");
  EXPECT_EQ(sent["max_tokens"], 16);
}

TEST(LlmClientTest, ReturnsToolCalls) {
  TestHttpServer server([](const HttpRequest&) {
    Json body = {
        {"choices",
         Json::array(
             {{{"message",
                {{"role", "assistant"},
                 {"content", nullptr},
                 {"tool_calls",
                  Json::array(
                      {{{"id", "call_1"},
                        {"type", "function"},
                        {"function", {{"name", "get_order"}, {"arguments", "{\"id\":42}"}}}}})}}},
               {"finish_reason", "tool_calls"}}})}};
    return HttpReply::Respond(200, body.dump());
  });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_TRUE(r.tool_calls.is_array());
  EXPECT_EQ(r.tool_calls[0]["function"]["name"], "get_order");
  EXPECT_EQ(r.finish_reason, "tool_calls");
  EXPECT_EQ(r.content, "");
}

TEST(LlmClientTest, NotifyFdSignalsWaitingResultsAndDrainClearsIt) {
  TestHttpServer server([](const HttpRequest&) { return Ok(); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  pollfd p{client->notify_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  for (uint64_t i = 0; i < 3; ++i) client->Submit(MakeRequest(i));
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return server.request_count() == 3; }, 10000));
  std::vector<ChatResult> out;
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] {
        pollfd q{client->notify_fd(), POLLIN, 0};
        if (::poll(&q, 1, 0) == 1) client->Drain(&out);
        return out.size() == 3;
      },
      10000));
  p.revents = 0;
  EXPECT_EQ(::poll(&p, 1, 0), 0);  // drained: no longer readable
  EXPECT_EQ(client->Drain(&out), 0u);
}

TEST(LlmClientTest, UnknownPoolIsInvalidArgumentAtOnce) {
  TestHttpServer server([](const HttpRequest&) { return Ok(); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(5, "no-such-pool"));
  std::vector<ChatResult> out;
  EXPECT_EQ(client->Drain(&out), 1u);  // completed inside Submit
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out[0].status.message().find("no-such-pool"), std::string::npos);
  EXPECT_EQ(server.request_count(), 0u);
}

TEST(LlmClientTest, BadBodyIsInvalidArgument) {
  TestHttpServer server([](const HttpRequest&) { return Ok(); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  ChatRequest not_object = MakeRequest(1);
  not_object.body = Json::array({1, 2});
  client->Submit(not_object);
  ChatRequest streaming = MakeRequest(2);
  streaming.body["stream"] = true;
  client->Submit(streaming);
  auto results = WaitResults(*client, 2);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) {
    EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.attempts, 0);
  }
  EXPECT_EQ(server.request_count(), 0u);
}

TEST(LlmClientTest, RejectsBadConfiguration) {
  auto create = [](PoolConfig p) { return LlmClient::Create({std::move(p)}, SystemClock::Get()); };
  EXPECT_EQ(create(MakePool({})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(create(MakePool({"not a url"})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(create(MakePool({"ftp://127.0.0.1/v1"})).status().code(), StatusCode::kInvalidArgument);
  PoolConfig zero_cap = MakePool({"http://127.0.0.1:1/v1"});
  zero_cap.max_concurrency_per_endpoint = 0;
  EXPECT_EQ(create(zero_cap).status().code(), StatusCode::kInvalidArgument);
  PoolConfig bad_key = MakePool({"http://127.0.0.1:1/v1"});
  bad_key.api_key = "sk-abc\r\nX-Injected: 1";
  auto injected = create(bad_key);
  ASSERT_FALSE(injected.ok());
  EXPECT_EQ(injected.status().message().find("sk-abc"), std::string::npos);
  auto dup =
      LlmClient::Create({MakePool({"http://127.0.0.1:1/v1"}), MakePool({"http://127.0.0.1:2/v1"})},
                        SystemClock::Get());
  EXPECT_EQ(dup.status().code(), StatusCode::kInvalidArgument);
  PoolConfig secret_url = MakePool({"http://user:hunter2@127.0.0.1:1/v1", "bogus"});
  auto bad = create(secret_url);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("hunter2"), std::string::npos);
}

TEST(LlmClientTest, RetriesServerErrorsThenSucceeds) {
  TestHttpServer server([](const HttpRequest& req) {
    if (req.index == 0) return HttpReply::Respond(500, R"({"error":{"message":"engine crashed"}})");
    if (req.index == 1) return HttpReply::Respond(502, "bad gateway");
    return Ok("finally");
  });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.content, "finally");
  EXPECT_EQ(r.attempts, 3);
  EXPECT_EQ(server.request_count(), 3u);
  auto stats = StatsFor(*client, server.base_url());
  EXPECT_EQ(stats.requests, 3);
  EXPECT_EQ(stats.retries, 2);
  EXPECT_EQ(stats.errors, 2);
  EXPECT_EQ(stats.in_flight, 0);
}

TEST(LlmClientTest, GivesUpAfterMaxRetriesWithUnavailable) {
  TestHttpServer server(
      [](const HttpRequest&) { return HttpReply::Respond(503, R"({"message":"overloaded"})"); });
  PoolConfig pool = MakePool({server.base_url()});
  pool.max_retries = 2;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  EXPECT_EQ(r.status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(r.attempts, 3);
  EXPECT_EQ(r.http_status, 503);
  EXPECT_NE(r.status.message().find("overloaded"), std::string::npos);
  EXPECT_NE(r.error_body.find("overloaded"), std::string::npos);
  EXPECT_EQ(server.request_count(), 3u);
}

TEST(LlmClientTest, HonoursRetryAfterSecondsOn429) {
  TestHttpServer server([](const HttpRequest& req) {
    if (req.index == 0) {
      HttpReply r = HttpReply::Respond(429, R"({"error":{"message":"slow down"}})");
      r.headers.push_back({"Retry-After", "1"});
      return r;
    }
    return Ok();
  });
  PoolConfig pool = MakePool({server.base_url()});
  pool.backoff_max_s = 1;  // Retry-After cap 4 s; backoff alone would wait <= 10 ms
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.attempts, 2);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_GE(GapMs(reqs[0], reqs[1]), 1000);
  EXPECT_LT(GapMs(reqs[0], reqs[1]), 3000);
}

TEST(LlmClientTest, HonoursRetryAfterHttpDateOn503) {
  TestHttpServer server([](const HttpRequest& req) {
    if (req.index == 0) {
      HttpReply r = HttpReply::Respond(503, "busy");
      // Two seconds ahead, at one-second resolution: the wait is in (1, 2] s.
      time_t when = ::time(nullptr) + 2;
      char date[64];
      std::tm tm{};
      ::gmtime_r(&when, &tm);
      std::strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
      r.headers.push_back({"Retry-After", date});
      return r;
    }
    return Ok();
  });
  PoolConfig pool = MakePool({server.base_url()});
  pool.backoff_max_s = 1;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_GE(GapMs(reqs[0], reqs[1]), 900);
}

TEST(LlmClientTest, RetryAfterIsCappedAtFourTimesBackoffMax) {
  TestHttpServer server([](const HttpRequest& req) {
    if (req.index == 0) {
      HttpReply r = HttpReply::Respond(429, "");
      r.headers.push_back({"Retry-After", "3600"});
      return r;
    }
    return Ok();
  });
  PoolConfig pool = MakePool({server.base_url()});
  pool.backoff_max_s = 0.1;  // cap: 0.4 s
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client, 10000);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_GE(GapMs(reqs[0], reqs[1]), 390);
  EXPECT_LT(GapMs(reqs[0], reqs[1]), 3000);
}

TEST(LlmClientTest, NonRetryable400ReturnsAtOnceWithServerMessage) {
  TestHttpServer server([](const HttpRequest&) {
    return HttpReply::Respond(
        400,
        R"({"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","param":null,"code":400})");
  });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  auto start = std::chrono::steady_clock::now();
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.http_status, 400);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_NE(r.status.message().find("maximum context length"), std::string::npos);
  EXPECT_NE(r.error_body.find("maximum context length"), std::string::npos);
  EXPECT_EQ(server.request_count(), 1u);
  // A request error says nothing bad about the endpoint.
  EXPECT_TRUE(StatsFor(*client, server.base_url()).healthy);
}

TEST(LlmClientTest, OtherClientErrorsAreNotRetried) {
  for (int status : {401, 403, 404, 422}) {
    TestHttpServer server([status](const HttpRequest&) {
      return HttpReply::Respond(status, R"({"detail":"nope"})");
    });
    auto client = MakeClient({MakePool({server.base_url()})});
    ASSERT_TRUE(client);
    client->Submit(MakeRequest(1));
    ChatResult r = WaitOne(*client);
    EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(r.attempts, 1) << status;
    EXPECT_EQ(server.request_count(), 1u) << status;
  }
}

TEST(LlmClientTest, MalformedOkResponsesAreRetried) {
  TestHttpServer server([](const HttpRequest& req) {
    if (req.index == 0) return HttpReply::Respond(200, "<html>proxy error</html>");
    if (req.index == 1) return HttpReply::Respond(200, R"({"object":"chat.completion"})");
    if (req.index == 2)
      return HttpReply::Respond(200, R"({"choices": [{"message": {"content": "tru)");
    return Ok("good");
  });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.content, "good");
  EXPECT_EQ(r.attempts, 4);
}

TEST(LlmClientTest, HangingServerTimesOutWithDeadlineExceeded) {
  TestHttpServer server([](const HttpRequest&) { return HttpReply::Hang(); });
  PoolConfig pool = MakePool({server.base_url()});
  pool.timeout_s = 0.3;
  pool.max_retries = 1;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  auto start = std::chrono::steady_clock::now();
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status.code(), StatusCode::kDeadlineExceeded) << r.status.ToString();
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(server.request_count(), 2u);
  EXPECT_GE(elapsed, std::chrono::milliseconds(550));
  EXPECT_LT(elapsed, std::chrono::seconds(5));
  // The client hung up on both attempts.
  EXPECT_TRUE(matrix::testing::WaitUntil([&] { return server.active() == 0; }, 2000));
}

TEST(LlmClientTest, DroppedConnectionIsRetried) {
  TestHttpServer server([](const HttpRequest& req) {
    if (req.index == 0) return HttpReply::Close(20);
    return Ok("after drop");
  });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.content, "after drop");
  EXPECT_EQ(r.attempts, 2);
}

TEST(LlmClientTest, ConnectionRefusedExhaustsRetries) {
  PoolConfig pool = MakePool({"http://127.0.0.1:" + std::to_string(test::UnusedPort()) + "/v1"});
  pool.max_retries = 2;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  EXPECT_EQ(r.status.code(), StatusCode::kUnavailable) << r.status.ToString();
  EXPECT_EQ(r.attempts, 3);
  EXPECT_EQ(r.http_status, 0);
}

TEST(LlmClientTest, ReusesKeepAliveConnections) {
  TestHttpServer server([](const HttpRequest&) { return Ok(); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 20; ++i) {
    client->Submit(MakeRequest(i));
    ASSERT_TRUE(WaitOne(*client).status.ok());
  }
  EXPECT_EQ(server.request_count(), 20u);
  EXPECT_EQ(server.connections(), 1);
}

TEST(LlmClientTest, BearerKeyIsSentButNeverLeaked) {
  const std::string secret = "sk-test-9f8e7d6c5b4a-SECRET";
  // The server echoes the Authorization header it got, as some proxies do.
  TestHttpServer server([](const HttpRequest& req) {
    std::string auth = req.headers.count("authorization") ? req.headers.at("authorization") : "";
    Json err = {{"error", {{"message", "invalid credentials: " + auth}}}};
    if (req.index < 2) return HttpReply::Respond(500, err.dump());
    return HttpReply::Respond(401, err.dump() + " raw: " + auth);
  });
  PoolConfig pool = MakePool({server.base_url()});
  pool.api_key = secret;
  LogLevel old_level = GetLogLevel();
  SetLogLevel(LogLevel::kDebug);
  ::testing::internal::CaptureStderr();
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  auto stats = client->Stats();
  client.reset();
  std::string logs = ::testing::internal::GetCapturedStderr();
  SetLogLevel(old_level);

  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  for (const auto& req : reqs) EXPECT_EQ(req.headers.at("authorization"), "Bearer " + secret);

  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.http_status, 401);
  EXPECT_NE(r.status.message().find("invalid credentials"), std::string::npos);
  EXPECT_EQ(r.status.message().find(secret), std::string::npos) << r.status.message();
  EXPECT_EQ(r.error_body.find(secret), std::string::npos) << r.error_body;
  EXPECT_EQ(r.raw.dump().find(secret), std::string::npos);
  EXPECT_NE(logs.find("attempt 1 failed"), std::string::npos) << "debug logs were not captured";
  EXPECT_EQ(logs.find(secret), std::string::npos) << logs;
  for (const auto& s : stats) EXPECT_EQ(s.url.find(secret), std::string::npos);
}

TEST(LlmClientTest, KeyEchoedInASuccessfulAnswerIsScrubbed) {
  const std::string secret = "sk-echo-0123456789abcdef";
  TestHttpServer server([](const HttpRequest& req) {
    return Ok("your header was " + req.headers.at("authorization"));
  });
  PoolConfig pool = MakePool({server.base_url()});
  pool.api_key = secret;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.content.find(secret), std::string::npos) << r.content;
  EXPECT_EQ(r.raw.dump().find(secret), std::string::npos);
}

TEST(LlmClientTest, EndpointUserInfoIsHiddenFromResultsAndStats) {
  TestHttpServer server([](const HttpRequest&) { return Ok(); });
  std::string url = "http://alice:hunter2@127.0.0.1:" + std::to_string(server.port()) + "/v1";
  auto client = MakeClient({MakePool({url})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.endpoint, server.base_url());
  for (const auto& s : client->Stats()) EXPECT_EQ(s.url.find("hunter2"), std::string::npos);
}

TEST(LlmClientTest, BalancesAcrossEndpoints) {
  TestHttpServer a([](const HttpRequest&) { return Ok("a", 5); });
  TestHttpServer b([](const HttpRequest&) { return Ok("b", 5); });
  auto client = MakeClient({MakePool({a.base_url(), b.base_url()})});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 200; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 200);
  ASSERT_EQ(results.size(), 200u);
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_GE(a.request_count(), 80u);
  EXPECT_GE(b.request_count(), 80u);
  EXPECT_EQ(a.request_count() + b.request_count(), 200u);
}

TEST(LlmClientTest, LeastOutstandingFavoursTheFasterEndpoint) {
  TestHttpServer slow([](const HttpRequest&) { return Ok("slow", 300); });
  TestHttpServer fast([](const HttpRequest&) { return Ok("fast", 0); });
  PoolConfig pool = MakePool({slow.base_url(), fast.base_url()});
  pool.max_concurrency_per_endpoint = 4;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 60; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 60);
  ASSERT_EQ(results.size(), 60u);
  EXPECT_GT(fast.request_count(), 3 * slow.request_count());
}

TEST(LlmClientTest, ConcurrencyCapIsNeverExceeded) {
  TestHttpServer server([](const HttpRequest&) { return Ok("x", 40); });
  PoolConfig pool = MakePool({server.base_url()});
  pool.max_concurrency_per_endpoint = 3;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 30; ++i) client->Submit(MakeRequest(i));
  int max_seen_in_flight = 0;
  std::vector<ChatResult> results;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (results.size() < 30 && std::chrono::steady_clock::now() < deadline) {
    max_seen_in_flight = std::max(max_seen_in_flight, client->Stats()[0].in_flight);
    pollfd p{client->notify_fd(), POLLIN, 0};
    ::poll(&p, 1, 5);
    client->Drain(&results);
  }
  ASSERT_EQ(results.size(), 30u);
  for (const auto& r : results) EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(server.max_active(), 3);
  EXPECT_LE(max_seen_in_flight, 3);
  EXPECT_EQ(server.request_count(), 30u);
}

TEST(LlmClientTest, OverloadAnswersAndTimeoutsLowerTheLimitOtherErrorsDoNot) {
  struct Case {
    int status;  // 0: never answer, so the attempt times out
    bool adaptive;
    double limit_after;
  };
  for (Case c : {Case{429, true, 4}, Case{503, true, 4}, Case{0, true, 4}, Case{500, true, 8},
                 Case{502, true, 8}, Case{400, true, 8}, Case{200, true, 8}, Case{429, false, 8},
                 Case{0, false, 8}}) {
    TestHttpServer server([c](const HttpRequest&) {
      if (c.status == 0) return HttpReply::Hang();
      if (c.status == 200) return Ok();
      HttpReply r = HttpReply::Respond(c.status, R"({"error":{"message":"no"}})");
      r.headers.push_back({"Retry-After", "0"});
      return r;
    });
    PoolConfig pool = MakePool({server.base_url()});
    pool.max_concurrency_per_endpoint = 8;
    pool.max_retries = 0;
    pool.timeout_s = 0.2;
    pool.adaptive_concurrency = c.adaptive;
    auto client = MakeClient({pool});
    ASSERT_TRUE(client);
    EXPECT_EQ(StatsFor(*client, server.base_url()).concurrency_limit, 8);
    client->Submit(MakeRequest(1));
    ChatResult r = WaitOne(*client);
    EXPECT_EQ(r.attempts, 1);
    EXPECT_EQ(StatsFor(*client, server.base_url()).concurrency_limit, c.limit_after)
        << "status " << c.status << (c.adaptive ? "" : ", adaptive off");
  }
}

TEST(LlmClientTest, RejectsBadAdaptiveConcurrencySettings) {
  for (double decrease : {0.0, 1.0, -0.5, 2.0}) {
    PoolConfig pool = MakePool({"http://127.0.0.1:1/v1"});
    pool.aimd_decrease = decrease;
    auto c = LlmClient::Create({pool}, SystemClock::Get());
    ASSERT_FALSE(c.ok()) << decrease;
    EXPECT_NE(c.status().message().find("aimd_decrease"), std::string::npos);
  }
  PoolConfig pool = MakePool({"http://127.0.0.1:1/v1"});
  pool.latency_target_s = -1;
  auto c = LlmClient::Create({pool}, SystemClock::Get());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("latency_target_s"), std::string::npos);
}

TEST(LlmClientTest, AdaptiveLimitBacksOffUnderSustained429sAndClimbsBack) {
  // While `overloaded`, the server serves 4 requests at a time (20 ms each)
  // and answers any request beyond that with 429 and Retry-After: 0.
  constexpr int kCap = 64;
  constexpr int kCapacity = 4;
  std::atomic<bool> overloaded{true};
  std::atomic<TestHttpServer*> self{nullptr};
  TestHttpServer server([&](const HttpRequest&) {
    TestHttpServer* s = self.load();
    if (overloaded && s != nullptr && s->active() > kCapacity) {
      HttpReply r = HttpReply::Respond(429, R"({"error":{"message":"over capacity"}})");
      r.headers.push_back({"Retry-After", "0"});
      return r;
    }
    return Ok("x", 20);
  });
  self = &server;
  PoolConfig pool = MakePool({server.base_url()});
  pool.max_concurrency_per_endpoint = kCap;
  pool.max_retries = 100'000;  // every request gets through eventually
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);

  uint64_t submitted = 0;
  std::vector<ChatResult> results;
  // Keeps twice the cap outstanding, so the adaptive limit is what binds, until
  // `done` holds or `ms` passed.
  auto pump = [&](const std::function<bool()>& done, int ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < deadline) {
      while (submitted - results.size() < 2 * kCap) client->Submit(MakeRequest(submitted++));
      if (done()) return true;
      pollfd p{client->notify_fd(), POLLIN, 0};
      ::poll(&p, 1, 2);
      client->Drain(&results);
    }
    return false;
  };
  auto limit = [&] { return StatsFor(*client, server.base_url()).concurrency_limit; };
  auto never = [] { return false; };

  // Overloaded: the limit falls far below the cap and stays there.
  ASSERT_TRUE(pump([&] { return limit() <= kCap / 8; }, 20000)) << "limit " << limit();
  server.ResetMaxActive();
  pump(never, 1000);
  RecordProperty("overloaded_max_active", server.max_active());
  EXPECT_LE(server.max_active(), kCap / 4);
  EXPECT_LE(limit(), kCap / 4);

  // Faults stop: the limit climbs back to the cap and the server sees it.
  overloaded = false;
  ASSERT_TRUE(pump([&] { return limit() >= kCap; }, 20000)) << "limit " << limit();
  server.ResetMaxActive();
  pump(never, 500);
  RecordProperty("recovered_max_active", server.max_active());
  EXPECT_GE(server.max_active(), kCap * 3 / 4);
  EXPECT_LE(server.max_active(), kCap);

  auto rest = WaitResults(*client, submitted - results.size(), 30000);
  for (auto& r : rest) results.push_back(std::move(r));
  ASSERT_EQ(results.size(), submitted);
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status.ToString();
}

TEST(LlmClientTest, QueuedRequestsAreServedInSubmissionOrder) {
  TestHttpServer server([](const HttpRequest&) { return Ok("x", 10); });
  PoolConfig pool = MakePool({server.base_url()});
  pool.max_concurrency_per_endpoint = 1;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 10; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 10);
  ASSERT_EQ(results.size(), 10u);
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 10u);
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(Json::parse(reqs[i].body)["messages"][0]["content"], "hello " + std::to_string(i));
}

TEST(LlmClientTest, RetryPrefersAnotherEndpoint) {
  TestHttpServer bad([](const HttpRequest&) { return HttpReply::Respond(500, "broken"); });
  TestHttpServer good([](const HttpRequest&) { return Ok(); });
  PoolConfig pool = MakePool({bad.base_url(), good.base_url()});
  pool.breaker_failures = 1000;  // keep the bad endpoint in rotation
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 20; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 20);
  ASSERT_EQ(results.size(), 20u);
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_LE(r.attempts, 2);
    EXPECT_EQ(r.endpoint, good.base_url());
  }
  EXPECT_GT(bad.request_count(), 0u);
}

TEST(LlmClientTest, StickyKeysStayOnOneEndpoint) {
  TestHttpServer a([](const HttpRequest&) { return Ok("a", 2); });
  TestHttpServer b([](const HttpRequest&) { return Ok("b", 2); });
  PoolConfig pool = MakePool({a.base_url(), b.base_url()});
  pool.sticky = true;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  uint64_t tag = 0;
  for (int k = 0; k < 40; ++k)
    for (int turn = 0; turn < 5; ++turn)
      client->Submit(MakeRequest(tag++, "m", "task-" + std::to_string(k)));
  auto results = WaitResults(*client, tag);
  ASSERT_EQ(results.size(), tag);
  std::map<uint64_t, ChatResult*> by_tag;
  for (auto& r : results) by_tag[r.tag] = &r;
  std::set<std::string> homes;
  for (int k = 0; k < 40; ++k) {
    std::set<std::string> used;
    for (int turn = 0; turn < 5; ++turn) used.insert(by_tag[k * 5 + turn]->endpoint);
    EXPECT_EQ(used.size(), 1u) << "task-" << k;
    homes.insert(*used.begin());
  }
  EXPECT_EQ(homes.size(), 2u);  // keys spread over both endpoints
}

TEST(LlmClientTest, CircuitBreakerSkipsFailingEndpointAndProbesAfterCooldown) {
  FakeClock clock;
  TestHttpServer bad([](const HttpRequest&) { return HttpReply::Respond(500, "down"); });
  TestHttpServer good([](const HttpRequest&) { return Ok(); });
  PoolConfig pool = MakePool({bad.base_url(), good.base_url()});
  pool.backoff_base_s = 0;  // retries due at once on the fake clock
  pool.breaker_failures = 2;
  pool.breaker_cooldown_s = 60;
  auto client = MakeClient({pool}, &clock);
  ASSERT_TRUE(client);
  // One at a time, so round-robin keeps offering the bad endpoint until it trips.
  for (uint64_t i = 0; i < 10; ++i) {
    client->Submit(MakeRequest(i));
    ASSERT_TRUE(WaitOne(*client).status.ok());
  }
  EXPECT_EQ(bad.request_count(), 2u);
  EXPECT_FALSE(StatsFor(*client, bad.base_url()).healthy);
  EXPECT_TRUE(StatsFor(*client, good.base_url()).healthy);

  // Cool-down over: exactly one probe reaches the bad endpoint, fails, and the
  // breaker opens again.
  clock.AdvanceMillis(61'000);
  for (uint64_t i = 10; i < 20; ++i) {
    client->Submit(MakeRequest(i));
    ChatResult r = WaitOne(*client);
    ASSERT_TRUE(r.status.ok());
  }
  EXPECT_EQ(bad.request_count(), 3u);
  EXPECT_FALSE(StatsFor(*client, bad.base_url()).healthy);
}

TEST(LlmClientTest, AllEndpointsUnhealthyStillSendsAndRecovers) {
  std::atomic<bool> broken{true};
  auto handler = [&broken](const HttpRequest&) {
    return broken ? HttpReply::Respond(502, "down") : Ok("back");
  };
  TestHttpServer a(handler);
  TestHttpServer b(handler);
  PoolConfig pool = MakePool({a.base_url(), b.base_url()});
  pool.breaker_failures = 1;
  pool.breaker_cooldown_s = 3600;
  pool.max_retries = 3;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  EXPECT_EQ(r.status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(r.attempts, 4);  // every attempt was sent although both endpoints were open
  EXPECT_EQ(a.request_count() + b.request_count(), 4u);
  for (const auto& s : client->Stats()) EXPECT_FALSE(s.healthy);

  broken = false;
  client->Submit(MakeRequest(2));
  r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.content, "back");
  EXPECT_TRUE(StatsFor(*client, r.endpoint).healthy);
}

TEST(LlmClientTest, RetryTimersFollowTheInjectedClock) {
  FakeClock clock;
  TestHttpServer server([](const HttpRequest& req) {
    return req.index == 0 ? HttpReply::Respond(500, "oops") : Ok();
  });
  PoolConfig pool = MakePool({server.base_url()});
  pool.backoff_base_s = 20;
  pool.backoff_max_s = 20;
  auto client = MakeClient({pool}, &clock);
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return server.request_count() == 1; }, 5000));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(server.request_count(), 1u);  // the retry waits for (fake) time to pass
  std::vector<ChatResult> none;
  EXPECT_EQ(client->Drain(&none), 0u);
  clock.AdvanceMillis(20'001);
  ChatResult r = WaitOne(*client);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.attempts, 2);
  EXPECT_GE(r.latency_ns, 20'000'000'000);
}

TEST(LlmClientTest, ShutdownCancelsOutstandingRequests) {
  TestHttpServer server([](const HttpRequest&) { return HttpReply::Hang(); });
  PoolConfig pool = MakePool({server.base_url()});
  pool.max_concurrency_per_endpoint = 2;  // 2 in flight, 3 queued
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 5; ++i) client->Submit(MakeRequest(i));
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return server.request_count() == 2; }, 5000));
  auto start = std::chrono::steady_clock::now();
  client->Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  std::vector<ChatResult> out;
  EXPECT_EQ(client->Drain(&out), 5u);
  for (const auto& r : out) EXPECT_EQ(r.status.code(), StatusCode::kCancelled);
  client->Submit(MakeRequest(9));
  out.clear();
  ASSERT_EQ(client->Drain(&out), 1u);
  EXPECT_EQ(out[0].status.code(), StatusCode::kCancelled);
  for (const auto& s : client->Stats()) EXPECT_EQ(s.in_flight, 0);
  client->Shutdown();  // idempotent
}

TEST(LlmClientTest, DestructorWithRequestsInFlightReturnsPromptly) {
  TestHttpServer server([](const HttpRequest&) { return HttpReply::Hang(); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 50; ++i) client->Submit(MakeRequest(i));
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return server.request_count() == 50; }, 5000));
  auto start = std::chrono::steady_clock::now();
  client.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(LlmClientTest, SubmitIsThreadSafe) {
  TestHttpServer server([](const HttpRequest&) { return Ok(); });
  auto client = MakeClient({MakePool({server.base_url()})});
  ASSERT_TRUE(client);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) client->Submit(MakeRequest(t * 1000 + i));
    });
  }
  for (auto& th : threads) th.join();
  auto results = WaitResults(*client, 200);
  ASSERT_EQ(results.size(), 200u);
  std::set<uint64_t> tags;
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok());
    tags.insert(r.tag);
  }
  EXPECT_EQ(tags.size(), 200u);
}

TEST(LlmClientTest, ServesTwoPoolsIndependently) {
  TestHttpServer a([](const HttpRequest&) { return Ok("from a"); });
  TestHttpServer b([](const HttpRequest&) { return Ok("from b"); });
  PoolConfig pa = MakePool({a.base_url()}, "teacher");
  pa.model = "model-a";
  PoolConfig pb = MakePool({b.base_url()}, "student");
  pb.model = "model-b";
  auto client = MakeClient({pa, pb});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1, "teacher"));
  client->Submit(MakeRequest(2, "student"));
  auto results = WaitResults(*client, 2);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) EXPECT_EQ(r.content, r.tag == 1 ? "from a" : "from b");
  EXPECT_EQ(Json::parse(a.requests()[0].body)["model"], "model-a");
  EXPECT_EQ(Json::parse(b.requests()[0].body)["model"], "model-b");
}

TEST(LlmClientTest, ThousandsOfRequestsInFlightOnOneThread) {
  // Both servers hold every reply until all requests have arrived, so the test
  // sees the client keep 2,000 requests in flight at once.
  auto held = [](const HttpRequest&) {
    HttpReply r = Ok("x");
    r.hold = true;
    return r;
  };
  TestHttpServer a(held);
  TestHttpServer b(held);
  PoolConfig pool = MakePool({a.base_url(), b.base_url()});
  pool.max_concurrency_per_endpoint = 1000;
  pool.timeout_s = 60;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  const size_t n = 2000;
  for (uint64_t i = 0; i < n; ++i) client->Submit(MakeRequest(i));
  bool all_arrived = matrix::testing::WaitUntil(
      [&] { return a.active() + b.active() == static_cast<int>(n); }, 30000);
  EXPECT_TRUE(all_arrived) << "held at once: " << a.active() + b.active();
  EXPECT_EQ(a.active(), 1000);
  EXPECT_EQ(b.active(), 1000);
  int client_in_flight = 0;
  for (const auto& s : client->Stats()) client_in_flight += s.in_flight;
  EXPECT_EQ(client_in_flight, static_cast<int>(n));
  a.ReleaseHeld();
  b.ReleaseHeld();
  auto results = WaitResults(*client, n, 60000);
  ASSERT_EQ(results.size(), n);
  size_t ok = 0;
  for (const auto& r : results) ok += r.status.ok();
  EXPECT_EQ(ok, n);
  EXPECT_EQ(a.max_active(), 1000);
  EXPECT_EQ(b.max_active(), 1000);
}

// --- Against matrix-llm-sim ----------------------------------------------------

// Starts matrix-llm-sim with `extra` flags and returns its base URL, or "" when
// the binary has not been built (the caller skips).
class SimProcess {
 public:
  explicit SimProcess(const std::vector<std::string>& extra) {
    std::string bin = matrix::testing::BinPath("matrix-llm-sim");
    if (::access(bin.c_str(), X_OK) != 0) return;
    std::string port_file = dir_.File("port");
    std::vector<std::string> argv = {bin,       "--listen", "127.0.0.1:0", "--port-file",
                                     port_file, "--speed",  "10"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc_ = std::make_unique<matrix::testing::ChildProcess>(argv, dir_.File("sim.log"));
    std::string hostport;
    bool up = matrix::testing::WaitUntil(
        [&] {
          std::ifstream in(port_file);
          return static_cast<bool>(std::getline(in, hostport)) && !hostport.empty();
        },
        10000);
    if (up) base_url_ = "http://" + hostport + "/v1";
  }
  bool built() const { return proc_ != nullptr; }
  const std::string& base_url() const { return base_url_; }

 private:
  matrix::testing::TempDir dir_;
  std::unique_ptr<matrix::testing::ChildProcess> proc_;
  std::string base_url_;
};

TEST(LlmClientSimTest, ThousandConcurrentRequestsSucceed) {
  SimProcess sim({"--slots", "1024"});
  if (!sim.built()) GTEST_SKIP() << "matrix-llm-sim is not built";
  ASSERT_FALSE(sim.base_url().empty()) << "matrix-llm-sim did not write its port file";
  PoolConfig pool = MakePool({sim.base_url()});
  pool.max_concurrency_per_endpoint = 1000;
  pool.timeout_s = 60;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  const size_t n = 1000;
  for (uint64_t i = 0; i < n; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, n, 120000);
  ASSERT_EQ(results.size(), n);
  for (const auto& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_FALSE(r.content.empty() && r.tool_calls.is_null());
    EXPECT_GT(r.completion_tokens, 0);
  }
}

TEST(LlmClientSimTest, InjectedFaultsAreRetriedToSuccess) {
  SimProcess sim({"--slots", "256", "--fault-429", "0.05", "--retry-after-s", "1", "--fault-500",
                  "0.05", "--fault-503", "0.05", "--fault-drop", "0.05", "--fault-malformed",
                  "0.05"});
  if (!sim.built()) GTEST_SKIP() << "matrix-llm-sim is not built";
  ASSERT_FALSE(sim.base_url().empty()) << "matrix-llm-sim did not write its port file";
  PoolConfig pool = MakePool({sim.base_url()});
  pool.max_retries = 10;
  pool.breaker_failures = 1000;  // one endpoint: keep it in rotation regardless
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  const size_t n = 400;
  for (uint64_t i = 0; i < n; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, n, 120000);
  ASSERT_EQ(results.size(), n);
  int retried = 0;
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    retried += r.attempts > 1;
  }
  EXPECT_GT(retried, 0);
  EXPECT_GT(client->Stats()[0].retries, 0);
}

TEST(LlmClientSimTest, Sustained429sKeepConcurrencyFarBelowTheCap) {
  SimProcess sim({"--slots", "256", "--fault-429", "0.5", "--retry-after-s", "0"});
  if (!sim.built()) GTEST_SKIP() << "matrix-llm-sim is not built";
  ASSERT_FALSE(sim.base_url().empty()) << "matrix-llm-sim did not write its port file";
  constexpr int kCap = 64;
  PoolConfig pool = MakePool({sim.base_url()});
  pool.max_concurrency_per_endpoint = kCap;
  pool.max_retries = 1000;
  pool.timeout_s = 60;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  const size_t n = 300;
  for (uint64_t i = 0; i < n; ++i) client->Submit(MakeRequest(i));
  // In flight once the limit has come down (the first wave goes out at the cap).
  int max_in_flight_after = 0;
  bool came_down = false;
  std::vector<ChatResult> results;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (results.size() < n && std::chrono::steady_clock::now() < deadline) {
    LlmClient::EndpointStats s = client->Stats()[0];
    if (s.concurrency_limit <= kCap / 8) came_down = true;
    if (came_down) max_in_flight_after = std::max(max_in_flight_after, s.in_flight);
    pollfd p{client->notify_fd(), POLLIN, 0};
    ::poll(&p, 1, 2);
    client->Drain(&results);
  }
  ASSERT_EQ(results.size(), n);
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(came_down);
  RecordProperty("max_in_flight_after", max_in_flight_after);
  EXPECT_LE(max_in_flight_after, kCap / 4);
  EXPECT_LE(client->Stats()[0].concurrency_limit, kCap / 4);
}

TEST(LlmClientSimTest, ContextLengthExceededIsNotRetried) {
  SimProcess sim({"--max-model-len", "64"});
  if (!sim.built()) GTEST_SKIP() << "matrix-llm-sim is not built";
  ASSERT_FALSE(sim.base_url().empty()) << "matrix-llm-sim did not write its port file";
  auto client = MakeClient({MakePool({sim.base_url()})});
  ASSERT_TRUE(client);
  ChatRequest req = MakeRequest(1);
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "word" + std::to_string(i) + " ";
  req.body["messages"][0]["content"] = long_prompt;
  client->Submit(req);
  ChatResult r = WaitOne(*client);
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument) << r.status.ToString();
  EXPECT_EQ(r.http_status, 400);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_NE(r.status.message().find("maximum context length"), std::string::npos)
      << r.status.message();
}

}  // namespace
}  // namespace matrix::llm
