// Component tests for LlmClient against real HTTP servers on loopback: the
// scripted TestHttpServer (precise control of statuses, headers, delays and
// dropped connections) and, when it has been built, matrix-llm-sim.
//
// Every test runs twice (test/common/llm/CMakeLists.txt): with the client on
// its own thread, and with MATRIX_TEST_LLM_CALLER_LOOP=1 on a loop the test
// runs (LoopDriver), the way the worker drives it.
#include "common/llm/llm_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "common/base/event_loop.h"
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

bool CallerLoop() {
  const char* v = std::getenv("MATRIX_TEST_LLM_CALLER_LOOP");
  return v != nullptr && std::string(v) == "1";
}

// An EventLoop of the test's own that a client runs on, as the worker's
// does: each turn calls Pump() and waits at most what it allows (at most
// 20 ms, the worker's other work bounds its waits too). Its thread stops
// before the client goes; the loop itself outlives the client.
class LoopDriver {
 public:
  LoopDriver() {
    auto loop = EventLoop::Create(SystemClock::Get());
    EXPECT_TRUE(loop.ok()) << loop.status().ToString();
    loop_ = std::move(loop).value();
  }
  EventLoop* loop() { return loop_.get(); }
  void Start(LlmClient* client) {
    loop_->EachTurn([client] {
      const int wait = client->Pump();
      return int64_t{wait < 0 || wait > 20 ? 20 : wait} * 1'000'000;
    });
    thread_ = std::thread([this] { loop_->Run(); });
  }
  void StopThread() {
    loop_->Stop();
    if (thread_.joinable()) thread_.join();
  }
  ~LoopDriver() { StopThread(); }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

// Stops the client's loop (if any) before the client goes, and destroys the
// loop after it.
struct ClientDeleter {
  mutable std::shared_ptr<LoopDriver> driver;
  void operator()(LlmClient* client) const {
    if (driver) driver->StopThread();
    delete client;
    driver.reset();
  }
};
using ClientPtr = std::unique_ptr<LlmClient, ClientDeleter>;

ClientPtr MakeClient(std::vector<PoolConfig> pools, const Clock* clock = SystemClock::Get()) {
  ClientDeleter deleter;
  if (CallerLoop()) deleter.driver = std::make_shared<LoopDriver>();
  auto c = LlmClient::Create(std::move(pools), clock, deleter.driver ? deleter.driver->loop() : nullptr);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return ClientPtr(nullptr, ClientDeleter{});
  LlmClient* client = std::move(c).value().release();
  if (deleter.driver) deleter.driver->Start(client);
  return ClientPtr(client, std::move(deleter));
}

// Shutdown() as the client's owner calls it: on the caller's loop, once that
// loop no longer runs (the worker shuts its client down after its loop).
void ShutDown(ClientPtr& client) {
  if (client.get_deleter().driver) client.get_deleter().driver->StopThread();
  client->Shutdown();
}

// Waits up to `ms` for results: on notify_fd, the way a loop does, when the
// client has its own thread; with the client on a LoopDriver, results give
// this thread no signal: it naps.
void WaitReady(LlmClient& client, int ms) {
  if (CallerLoop()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 1)));
    return;
  }
  pollfd p{client.notify_fd(), POLLIN, 0};
  ::poll(&p, 1, ms);
}

// Until `n` results arrived or `timeout_ms` passed.
std::vector<ChatResult> WaitResults(LlmClient& client, size_t n, int timeout_ms = 20000) {
  std::vector<ChatResult> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (out.size() < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) break;
    WaitReady(client, static_cast<int>(left));
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

// The client's health probe: {"model", "messages": [ping], "max_tokens": 1}.
bool IsProbe(const HttpRequest& req) {
  Json body = Json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  return body.is_object() && body.value("max_tokens", 0) == 1 && body.contains("messages") &&
         body["messages"].size() == 1 && body["messages"][0].value("content", "") == "ping";
}

size_t ProbeCount(const TestHttpServer& server) {
  size_t n = 0;
  for (const auto& r : server.requests()) n += IsProbe(r);
  return n;
}

// Chat completions other than probes.
size_t UserRequestCount(const TestHttpServer& server) {
  size_t n = 0;
  for (const auto& r : server.requests())
    n += r.method == "POST" && r.path == "/v1/chat/completions" && !IsProbe(r);
  return n;
}

// Status code of "GET <path>" on 127.0.0.1:<port>, or -1.
int HttpGetStatus(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int status = -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[256];
      ssize_t n = ::recv(fd, buf, sizeof(buf) - 1, 0);
      if (n > 12) {
        buf[n] = '\0';
        std::sscanf(buf, "HTTP/1.1 %d", &status);
      }
    }
  }
  ::close(fd);
  return status;
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
  if (CallerLoop()) {
    EXPECT_EQ(client->notify_fd(), -1);
    GTEST_SKIP() << "on the caller's loop there is no notify_fd: the loop drains the results every turn";
  }
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

// Nothing listens: an outage, not the request's fault. The attempts use none
// of max_retries; the request waits out outage_s and then fails saying so.
TEST(LlmClientTest, ConnectionRefusedWaitsOutTheOutageWithoutUsingRetries) {
  PoolConfig pool = MakePool({"http://127.0.0.1:" + std::to_string(test::UnusedPort()) + "/v1"});
  pool.max_retries = 0;
  pool.outage_s = 1.0;
  pool.backoff_base_s = 0.05;
  pool.backoff_max_s = 0.1;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  const auto t0 = std::chrono::steady_clock::now();
  client->Submit(MakeRequest(1));
  ChatResult r = WaitOne(*client);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(r.status.code() == StatusCode::kUnavailable || r.status.code() == StatusCode::kDeadlineExceeded)
      << r.status.ToString();
  EXPECT_NE(r.status.message().find("1 s"), std::string::npos) << r.status.ToString();
  EXPECT_GE(r.attempts, 2);  // max_retries 0, yet it tried again
  EXPECT_GE(waited, 0.9);
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
    WaitReady(*client, 5);
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
    // A run of answers (one overload among successes says nothing about the
    // load): the limit halves once the overload share passes one half, and
    // only once within the decrease window.
    for (uint64_t i = 0; i < 12; ++i) {
      client->Submit(MakeRequest(i));
      ChatResult r = WaitOne(*client);
      EXPECT_EQ(r.attempts, 1);
    }
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
      WaitReady(*client, 2);
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

  // Cool-down over: the client sends one health probe (not a user request) to
  // the bad endpoint; it fails and the breaker stays open, the next probe a
  // cool-down later.
  clock.AdvanceMillis(61'000);
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return bad.request_count() == 3; }, 5000));
  EXPECT_TRUE(IsProbe(bad.requests()[2]));
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] { return StatsFor(*client, bad.base_url()).probes_failed == 1; }, 5000));
  for (uint64_t i = 10; i < 20; ++i) {
    client->Submit(MakeRequest(i));
    ChatResult r = WaitOne(*client);
    ASSERT_TRUE(r.status.ok());
    EXPECT_EQ(r.endpoint, good.base_url());
  }
  EXPECT_EQ(bad.request_count(), 3u);
  auto stats = StatsFor(*client, bad.base_url());
  EXPECT_FALSE(stats.healthy);
  EXPECT_EQ(stats.state, "unhealthy");
  EXPECT_EQ(stats.requests, 2);  // the probe is not a user request
  EXPECT_EQ(stats.probes, 1);
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
  ShutDown(client);
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

// --- Endpoints that change while the client runs ------------------------------

void ExpectProbeBody(const HttpRequest& req, const std::string& key) {
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.path, "/v1/chat/completions");
  EXPECT_EQ(Json::parse(req.body),
            Json::parse(R"({"model":"test-model","messages":[{"role":"user","content":"ping"}],)"
                        R"("max_tokens":1})"))
      << req.body;
  if (key.empty()) {
    EXPECT_EQ(req.headers.count("authorization"), 0u);
  } else {
    EXPECT_EQ(req.headers.count("authorization") ? req.headers.at("authorization") : "",
              "Bearer " + key);
  }
}

TEST(LlmClientEndpointsTest, ConfiguredEndpointsReportActiveAndAreNotProbed) {
  TestHttpServer a([](const HttpRequest&) { return Ok(); });
  auto client = MakeClient({MakePool({a.base_url()})});
  ASSERT_TRUE(client);
  client->Submit(MakeRequest(1));
  ASSERT_TRUE(WaitOne(*client).status.ok());
  auto s = StatsFor(*client, a.base_url());
  EXPECT_TRUE(s.active);
  EXPECT_TRUE(s.healthy);
  EXPECT_EQ(s.state, "healthy");
  EXPECT_EQ(s.probes, 0);
  EXPECT_EQ(ProbeCount(a), 0u);
}

TEST(LlmClientEndpointsTest, SetEndpointsRejectsBadInput) {
  PoolConfig pool = MakePool({"http://127.0.0.1:1/v1"});
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  EXPECT_EQ(client->SetEndpoints("nope", {"http://127.0.0.1:2/v1"}).code(),
            StatusCode::kInvalidArgument);
  Status bad = client->SetEndpoints("m", {"http://127.0.0.1:2/v1", "ftp://x/v1"});
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("endpoint 1"), std::string::npos) << bad.message();
  EXPECT_EQ(client->SetEndpoints("m", {"not a url"}).code(), StatusCode::kInvalidArgument);
  Status empty = client->SetEndpoints("m", {});
  EXPECT_EQ(empty.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("allow_no_endpoints"), std::string::npos) << empty.message();
  Status secret = client->SetEndpoints("m", {"http://u:hunter2@127.0.0.1:2/v1", "bogus"});
  EXPECT_EQ(secret.message().find("hunter2"), std::string::npos) << secret.message();
  // Nothing was applied.
  auto stats = client->Stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].url, "http://127.0.0.1:1/v1");
  ShutDown(client);
  EXPECT_EQ(client->SetEndpoints("m", {"http://127.0.0.1:2/v1"}).code(), StatusCode::kCancelled);

  PoolConfig none = MakePool({});
  none.allow_no_endpoints = true;
  auto c2 = MakeClient({none});
  ASSERT_TRUE(c2);
  EXPECT_TRUE(c2->Stats().empty());
  EXPECT_TRUE(c2->SetEndpoints("m", {}).ok());
}

TEST(LlmClientEndpointsTest, EndpointAddedAtRuntimeGetsTrafficOnlyAfterItsProbeSucceeds) {
  const std::string key = "sk-probe-key-123";
  TestHttpServer a([](const HttpRequest&) { return Ok("a"); });
  std::atomic<int> probes{0};
  TestHttpServer b([&probes](const HttpRequest& req) {
    if (IsProbe(req)) {
      // First probe: still warming up. Second: answered when the test says so.
      if (probes++ == 0) return HttpReply::Respond(500, R"({"message":"warming up"})");
      HttpReply r = Ok("pong");
      r.hold = true;
      return r;
    }
    return Ok("b");
  });
  PoolConfig pool = MakePool({a.base_url()});
  pool.api_key = key;
  pool.breaker_cooldown_s = 0.2;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->SetEndpoints("m", {a.base_url(), b.base_url()}).ok());

  // The new endpoint is probed at once; the failed probe is repeated a
  // cool-down later, and that one is held open. (The first probe also counts
  // as active for the moment before its 500 is sent.)
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] { return b.request_count() == 2 && b.active() == 1; }, 5000));
  auto reqs = b.requests();
  ASSERT_EQ(reqs.size(), 2u);
  ExpectProbeBody(reqs[0], key);
  ExpectProbeBody(reqs[1], key);
  EXPECT_GE(GapMs(reqs[0], reqs[1]), 190);
  auto sb = StatsFor(*client, b.base_url());
  EXPECT_EQ(sb.state, "probing");
  EXPECT_TRUE(sb.active);
  EXPECT_FALSE(sb.healthy);
  EXPECT_EQ(sb.probes, 2);
  EXPECT_EQ(sb.probes_failed, 1);
  EXPECT_EQ(sb.requests, 0);

  // While its probe is out, every request goes to the old endpoint.
  for (uint64_t i = 0; i < 20; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 20);
  ASSERT_EQ(results.size(), 20u);
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.endpoint, a.base_url());
  }
  EXPECT_EQ(b.request_count(), 2u);

  // The probe succeeds: the endpoint takes its share.
  b.ReleaseHeld();
  ASSERT_TRUE(
      matrix::testing::WaitUntil([&] { return StatsFor(*client, b.base_url()).healthy; }, 5000));
  for (uint64_t i = 100; i < 140; ++i) client->Submit(MakeRequest(i));
  results = WaitResults(*client, 40);
  ASSERT_EQ(results.size(), 40u);
  size_t on_b = 0;
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    on_b += r.endpoint == b.base_url();
  }
  EXPECT_GE(on_b, 10u);
  EXPECT_EQ(UserRequestCount(b), on_b);
  sb = StatsFor(*client, b.base_url());
  EXPECT_EQ(sb.state, "healthy");
  EXPECT_EQ(sb.requests, static_cast<int64_t>(on_b));  // probes are not user requests
  EXPECT_EQ(sb.retries, 0);
  EXPECT_EQ(sb.errors, 0);
  EXPECT_EQ(sb.probes, 2);  // a healthy endpoint is not probed
  EXPECT_EQ(ProbeCount(a), 0u);
}

TEST(LlmClientEndpointsTest, WithoutProbingANewEndpointTakesTrafficAtOnce) {
  TestHttpServer a([](const HttpRequest&) { return Ok("a", 5); });
  TestHttpServer b([](const HttpRequest&) { return Ok("b", 5); });
  PoolConfig pool = MakePool({a.base_url()});
  pool.probe_new_endpoints = false;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->SetEndpoints("m", {a.base_url(), b.base_url()}).ok());
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return client->Stats().size() == 2; }, 5000));
  for (uint64_t i = 0; i < 40; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 40);
  ASSERT_EQ(results.size(), 40u);
  EXPECT_GE(b.request_count(), 10u);
  EXPECT_EQ(ProbeCount(b), 0u);
}

TEST(LlmClientEndpointsTest, RetiredEndpointTakesNothingNewWhileItsInFlightRequestsComplete) {
  TestHttpServer a([](const HttpRequest&) { return Ok("a", 2); });
  std::atomic<bool> hold_b{true};
  TestHttpServer b([&hold_b](const HttpRequest& req) {
    HttpReply r = Ok("b");
    r.hold = hold_b && !IsProbe(req);
    return r;
  });
  PoolConfig pool = MakePool({a.base_url(), b.base_url()});
  pool.breaker_cooldown_s = 0.1;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 10; ++i) client->Submit(MakeRequest(i));
  // Everything not held by b completes on a.
  std::vector<ChatResult> results;
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] {
        client->Drain(&results);
        return results.size() + b.active() == 10;
      },
      10000));
  const int held = b.active();
  ASSERT_GE(held, 1);
  for (const auto& r : results) EXPECT_EQ(r.endpoint, a.base_url());

  ASSERT_TRUE(client->SetEndpoints("m", {a.base_url()}).ok());
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] { return StatsFor(*client, b.base_url()).state == "retired"; }, 5000));
  auto sb = StatsFor(*client, b.base_url());
  EXPECT_FALSE(sb.active);
  EXPECT_EQ(sb.in_flight, held);

  // New requests all go to a.
  results.clear();
  for (uint64_t i = 100; i < 130; ++i) client->Submit(MakeRequest(i));
  results = WaitResults(*client, 30);
  ASSERT_EQ(results.size(), 30u);
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.endpoint, a.base_url());
  }
  EXPECT_EQ(b.request_count(), static_cast<size_t>(held));

  // The requests in flight on the retired endpoint finish normally there.
  b.ReleaseHeld();
  results = WaitResults(*client, held);
  ASSERT_EQ(results.size(), static_cast<size_t>(held));
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.endpoint, b.base_url());
    EXPECT_EQ(r.content, "b");
    EXPECT_EQ(r.attempts, 1);
  }
  sb = StatsFor(*client, b.base_url());
  EXPECT_EQ(sb.in_flight, 0);
  EXPECT_EQ(sb.requests, held);
  EXPECT_EQ(sb.state, "retired");
  EXPECT_EQ(sb.probes, 0);

  // Back again: probed first, then serving, with its counters kept.
  hold_b = false;
  ASSERT_TRUE(client->SetEndpoints("m", {b.base_url(), a.base_url()}).ok());
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] { return StatsFor(*client, b.base_url()).state == "healthy"; }, 5000));
  EXPECT_TRUE(IsProbe(b.requests().at(held)));
  for (uint64_t i = 200; i < 240; ++i) client->Submit(MakeRequest(i));
  results = WaitResults(*client, 40);
  ASSERT_EQ(results.size(), 40u);
  size_t on_b = 0;
  for (const auto& r : results) on_b += r.endpoint == b.base_url();
  EXPECT_GE(on_b, 5u);
  sb = StatsFor(*client, b.base_url());
  EXPECT_EQ(sb.requests, held + static_cast<int64_t>(on_b));
  EXPECT_EQ(sb.probes, 1);
  EXPECT_EQ(client->Stats().size(), 2u);
}

TEST(LlmClientEndpointsTest, StickyKeysOfARetiredEndpointMoveAndTheOthersStay) {
  TestHttpServer a([](const HttpRequest&) { return Ok("a"); });
  TestHttpServer b([](const HttpRequest&) { return Ok("b"); });
  TestHttpServer c([](const HttpRequest&) { return Ok("c"); });
  PoolConfig pool = MakePool({a.base_url(), b.base_url(), c.base_url()});
  pool.sticky = true;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  auto route = [&](uint64_t base) {
    for (uint64_t k = 0; k < 60; ++k)
      client->Submit(MakeRequest(base + k, "m", "task-" + std::to_string(k)));
    std::map<uint64_t, std::string> home;
    for (auto& r : WaitResults(*client, 60)) {
      EXPECT_TRUE(r.status.ok()) << r.status.ToString();
      home[r.tag - base] = r.endpoint;
    }
    EXPECT_EQ(home.size(), 60u);
    return home;
  };
  auto before = route(0);
  ASSERT_TRUE(client->SetEndpoints("m", {a.base_url(), b.base_url()}).ok());
  ASSERT_TRUE(
      matrix::testing::WaitUntil([&] { return !StatsFor(*client, c.base_url()).active; }, 5000));
  auto after = route(1000);
  int moved = 0;
  for (const auto& [k, ep] : before) {
    if (ep == c.base_url()) {
      ++moved;
      EXPECT_NE(after[k], c.base_url());
    } else {
      EXPECT_EQ(after[k], ep) << "task-" << k;
    }
  }
  EXPECT_GT(moved, 5);
}

TEST(LlmClientEndpointsTest, PoolWithoutEndpointsQueuesUntilOneIsAdded) {
  PoolConfig pool = MakePool({});
  pool.allow_no_endpoints = true;
  pool.timeout_s = 30;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  EXPECT_TRUE(client->Stats().empty());
  for (uint64_t i = 0; i < 3; ++i) client->Submit(MakeRequest(i));
  // Nothing can serve them yet; they wait rather than fail.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::vector<ChatResult> none;
  EXPECT_EQ(client->Drain(&none), 0u);

  TestHttpServer server([](const HttpRequest&) { return Ok("served"); });
  ASSERT_TRUE(client->SetEndpoints("m", {server.base_url()}).ok());
  auto results = WaitResults(*client, 3);
  ASSERT_EQ(results.size(), 3u);
  for (const auto& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.content, "served");
    EXPECT_EQ(r.attempts, 1);
    EXPECT_GE(r.latency_ns, 200'000'000);
  }
  auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 4u);
  ExpectProbeBody(reqs[0], "");  // the probe went first
  for (size_t i = 1; i < reqs.size(); ++i) EXPECT_FALSE(IsProbe(reqs[i]));
}

TEST(LlmClientEndpointsTest, QueuedRequestsFailWithAClearErrorWhenNoEndpointArrives) {
  PoolConfig pool = MakePool({}, "llama");
  pool.allow_no_endpoints = true;
  pool.timeout_s = 0.3;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  auto start = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < 2; ++i) client->Submit(MakeRequest(i, "llama"));
  auto results = WaitResults(*client, 2, 10000);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) {
    EXPECT_EQ(r.status.code(), StatusCode::kDeadlineExceeded) << r.status.ToString();
    EXPECT_NE(r.status.message().find("no endpoint registered for model 'llama'"),
              std::string::npos)
        << r.status.message();
    EXPECT_EQ(r.attempts, 0);
    EXPECT_GE(r.latency_ns, 300'000'000);
  }
  EXPECT_LT(elapsed, std::chrono::seconds(5));

  // Registered but never passing its probe: the message says so.
  TestHttpServer broken([](const HttpRequest&) { return HttpReply::Respond(500, "no"); });
  ASSERT_TRUE(client->SetEndpoints("llama", {broken.base_url()}).ok());
  client->Submit(MakeRequest(7, "llama"));
  ChatResult r = WaitOne(*client, 10000);
  EXPECT_EQ(r.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(r.status.message().find("no endpoint of model 'llama' has passed its health probe"),
            std::string::npos)
      << r.status.message();
  EXPECT_EQ(UserRequestCount(broken), 0u);
  EXPECT_GE(ProbeCount(broken), 1u);

  // All endpoints retired: the wait counts from then, not from submission.
  TestHttpServer slow([](const HttpRequest&) { return Ok("slow", 300); });
  PoolConfig p2 = MakePool({slow.base_url()});
  p2.allow_no_endpoints = true;
  p2.timeout_s = 1;
  p2.max_concurrency_per_endpoint = 1;
  p2.adaptive_concurrency = false;
  auto c2 = MakeClient({p2});
  ASSERT_TRUE(c2);
  c2->Submit(MakeRequest(1));  // in flight
  c2->Submit(MakeRequest(2));  // queued behind it
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return slow.active() == 1; }, 5000));
  ASSERT_TRUE(c2->SetEndpoints("m", {}).ok());
  auto retired_at = std::chrono::steady_clock::now();
  auto both = WaitResults(*c2, 2, 10000);
  ASSERT_EQ(both.size(), 2u);
  std::map<uint64_t, ChatResult*> by_tag;
  for (auto& res : both) by_tag[res.tag] = &res;
  // The attempt in flight on the retired endpoint finishes normally.
  EXPECT_TRUE(by_tag[1]->status.ok()) << by_tag[1]->status.ToString();
  EXPECT_EQ(by_tag[1]->endpoint, slow.base_url());
  EXPECT_EQ(by_tag[2]->status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(by_tag[2]->status.message().find("no endpoint registered for model 'm'"),
            std::string::npos)
      << by_tag[2]->status.message();
  EXPECT_GE(std::chrono::steady_clock::now() - retired_at, std::chrono::milliseconds(950));
  EXPECT_EQ(slow.request_count(), 1u);
}

TEST(LlmClientEndpointsTest, QueueBehindBusyEndpointsIsNotBoundedByTheTimeout) {
  TestHttpServer server([](const HttpRequest&) { return Ok("x", 400); });
  PoolConfig pool = MakePool({server.base_url()});
  pool.allow_no_endpoints = true;
  pool.timeout_s = 1;
  pool.max_concurrency_per_endpoint = 1;
  pool.adaptive_concurrency = false;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 4; ++i) client->Submit(MakeRequest(i));
  auto results = WaitResults(*client, 4, 20000);
  ASSERT_EQ(results.size(), 4u);
  int64_t longest = 0;
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.attempts, 1);
    longest = std::max(longest, r.latency_ns);
  }
  EXPECT_GT(longest, 1'200'000'000);  // waited longer than timeout_s, still served
}

TEST(LlmClientEndpointsTest, EndpointFailingRealRequestsIsTakenOutProbedAndPutBack) {
  const std::string key = "sk-health-check-key";
  std::atomic<bool> broken{true};
  // Accepts connections and answers its health check, but fails completions.
  TestHttpServer flaky([&broken](const HttpRequest& req) {
    if (req.method == "GET" && req.path == "/health") return HttpReply::Respond(200, "");
    if (broken) return HttpReply::Respond(500, R"({"message":"CUDA error: out of memory"})");
    return Ok("flaky");
  });
  TestHttpServer good([](const HttpRequest&) { return Ok("good"); });
  ASSERT_EQ(HttpGetStatus(flaky.port(), "/health"), 200);
  PoolConfig pool = MakePool({flaky.base_url(), good.base_url()});
  pool.api_key = key;
  pool.breaker_failures = 2;
  pool.breaker_cooldown_s = 0.3;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);

  // One request at a time until the breaker opens; retries rescue every one.
  uint64_t tag = 0;
  for (; tag < 20 && StatsFor(*client, flaky.base_url()).healthy; ++tag) {
    client->Submit(MakeRequest(tag));
    ChatResult r = WaitOne(*client);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.endpoint, good.base_url());
  }
  auto sf = StatsFor(*client, flaky.base_url());
  ASSERT_EQ(sf.state, "unhealthy");
  EXPECT_EQ(sf.requests, 2);
  EXPECT_EQ(sf.errors, 2);
  const int64_t good_retries = StatsFor(*client, good.base_url()).retries;

  // Probed with the tiny request, a cool-down apart, while it keeps failing.
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] { return StatsFor(*client, flaky.base_url()).probes_failed >= 2; }, 5000));
  std::vector<HttpRequest> probes;
  for (const auto& r : flaky.requests())
    if (IsProbe(r)) probes.push_back(r);
  ASSERT_GE(probes.size(), 2u);
  for (const auto& p : probes) ExpectProbeBody(p, key);
  EXPECT_GE(GapMs(probes[0], probes[1]), 280);

  // No user request reaches it meanwhile.
  for (uint64_t i = 0; i < 20; ++i) client->Submit(MakeRequest(tag++));
  auto results = WaitResults(*client, 20);
  ASSERT_EQ(results.size(), 20u);
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.endpoint, good.base_url());
  }
  EXPECT_EQ(UserRequestCount(flaky), 2u);

  // It recovers: the next probe closes the breaker and traffic returns.
  broken = false;
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] { return StatsFor(*client, flaky.base_url()).healthy; }, 5000));
  sf = StatsFor(*client, flaky.base_url());
  EXPECT_EQ(sf.state, "healthy");
  EXPECT_EQ(sf.requests, 2);  // probes never count as user requests, errors or retries
  EXPECT_EQ(sf.errors, 2);
  EXPECT_EQ(sf.retries, 0);
  EXPECT_EQ(sf.probes_failed, sf.probes - 1);
  EXPECT_EQ(static_cast<size_t>(sf.probes), ProbeCount(flaky));
  EXPECT_EQ(StatsFor(*client, good.base_url()).probes, 0);
  EXPECT_EQ(StatsFor(*client, good.base_url()).retries, good_retries);

  for (uint64_t i = 0; i < 40; ++i) client->Submit(MakeRequest(tag++));
  results = WaitResults(*client, 40);
  ASSERT_EQ(results.size(), 40u);
  size_t on_flaky = 0;
  for (const auto& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    on_flaky += r.endpoint == flaky.base_url();
  }
  EXPECT_GE(on_flaky, 10u);
  const int64_t probes_then = StatsFor(*client, flaky.base_url()).probes;
  EXPECT_EQ(static_cast<size_t>(probes_then), ProbeCount(flaky));  // no probes while healthy
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
    WaitReady(*client, 2);
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

TEST(LlmClientSimTest, EndpointRegisteredAtRuntimePassesItsProbeAndServesQueuedRequests) {
  SimProcess sim({"--slots", "64"});
  if (!sim.built()) GTEST_SKIP() << "matrix-llm-sim is not built";
  ASSERT_FALSE(sim.base_url().empty()) << "matrix-llm-sim did not write its port file";
  PoolConfig pool = MakePool({});
  pool.allow_no_endpoints = true;
  pool.timeout_s = 60;
  auto client = MakeClient({pool});
  ASSERT_TRUE(client);
  for (uint64_t i = 0; i < 20; ++i) client->Submit(MakeRequest(i));
  ASSERT_TRUE(client->SetEndpoints("m", {sim.base_url()}).ok());
  auto results = WaitResults(*client, 20, 60000);
  ASSERT_EQ(results.size(), 20u);
  for (const auto& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.endpoint, sim.base_url());
  }
  auto s = StatsFor(*client, sim.base_url());
  EXPECT_EQ(s.state, "healthy");
  EXPECT_EQ(s.probes, 1);
  EXPECT_EQ(s.probes_failed, 0);
  EXPECT_EQ(s.requests, 20);
}

}  // namespace
}  // namespace matrix::llm
