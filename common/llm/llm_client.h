// LlmClient: asynchronous OpenAI-compatible chat-completions client for the
// worker's event loop.
//
// One client serves every model pool of a pipeline. It drives all HTTP
// transfers (thousands at once, keep-alive connections reused across
// requests) through libcurl's socket interface and an EventLoop, so a
// wake-up costs what the ready sockets cost, not what the open ones do. It
// runs on an EventLoop: either one of its own on a thread of its own (no
// loop given to Create(): the caller hands requests over with Submit() and
// collects results with Drain() when notify_fd() polls readable) or the
// caller's (what the worker uses: libcurl's sockets are watched on the
// caller's loop beside its own; each turn of that loop calls Pump() before
// it waits, waits at most what Pump() returned, and Drain()s). Either way
// the loop never blocks on the network; on the caller's loop no request or
// result crosses a thread.
//
// Per pool: requests go to the endpoint with the fewest outstanding requests
// (ties round-robin), or, with `sticky`, to the endpoint a request's
// sticky_key hashes to (rendezvous hashing) while it is healthy. Each endpoint
// takes at most its current concurrency limit of requests; the rest wait in
// the pool's FIFO queue. The limit adapts per endpoint (AIMD,
// `adaptive_concurrency`): it starts at max_concurrency_per_endpoint, which
// stays its ceiling; an overload answer (429, 503) or a timed-out attempt
// multiplies it by `aimd_decrease` (never below 1), at most once per window
// (the endpoint's mean success latency, 1 s before one is measured) and only
// for attempts started since the previous decrease; each success adds
// 1 / limit, so it climbs back by about one per round trip. With
// `latency_target_s`, a mean success latency above the target stops the
// growth and shrinks the limit by 0.9 per window. Failed attempts (429, 5xx,
// timeouts, connection errors, malformed 200 bodies) are retried after
// exponential backoff with full jitter or the server's Retry-After, on another
// endpoint when the pool has one.
//
// Circuit breaker and health probes: after `breaker_failures` consecutive
// failed attempts (5xx, timeouts, connection errors, malformed answers) an
// endpoint's breaker opens and it takes no user requests. Once
// `breaker_cooldown_s` has passed since its last failure, the client thread
// sends it a probe: POST <base>/chat/completions with the body
//   {"model": <pool model>, "messages": [{"role": "user", "content": "ping"}],
//    "max_tokens": 1}
// ("model" left out when the pool's `model` is empty), the pool's
// Authorization header and the pool's timeouts. A 2xx answer whose body parses
// as a chat completion closes the breaker and traffic returns; anything else
// (another status, a malformed body, a transport error or timeout) keeps it
// open and the next probe goes out max(breaker_cooldown_s, 0.1 s) later. User
// requests are never used as probes. At most one probe per endpoint is in
// flight. When every active endpoint's breaker is open, requests still go to
// the least-bad one (fewest consecutive failures); a success there closes its
// breaker too, a failure restarts its cool-down.
//
// Changing endpoints: SetEndpoints() replaces a pool's endpoint list while the
// client runs. An endpoint missing from the new list is retired: no new
// attempts or probes; attempts in flight finish normally (a failed one is
// retried elsewhere); its sticky keys move to the remaining endpoints while
// every other key stays where it was. An endpoint not seen before is added;
// with `probe_new_endpoints` (default) it takes user requests only after its
// first probe (sent at once, then every max(breaker_cooldown_s, 0.1 s) until
// one succeeds). A retired endpoint that reappears comes back with its
// counters, concurrency limit and breaker state kept, and, with
// `probe_new_endpoints`, again only after a successful probe. Endpoints given
// to Create() take traffic at once, without a probe. Endpoints are identified
// by their URL with trailing '/' removed; duplicates count once.
//
// No endpoint: with `allow_no_endpoints`, a pool may have no endpoint that
// takes requests (none configured, all retired, or all waiting for their
// first successful probe). Requests then wait in the pool's queue until one
// is admitted; a request that has waited `timeout_s` (counted from its
// submission, or from when the pool lost its last endpoint if that is later)
// completes with kDeadlineExceeded and the message
//   llm pool '<name>': no endpoint registered for model '<name>' within
//   timeout_s (<timeout_s> s)
// or, when endpoints are registered but none has been admitted,
//   llm pool '<name>': no endpoint of model '<name>' has passed its health
//   probe (<n> registered) within timeout_s (<timeout_s> s)
// followed by "; last attempt: <error>" when an earlier attempt failed. A
// queue behind busy endpoints is not bounded this way.
//
// Stats() reports every endpoint the pool ever had, retired ones included,
// with its state; probes are counted apart from user requests, errors and
// retries.
//
// API keys are sent as "Authorization: Bearer <key>" and never appear in
// results, status messages, logs or Stats().
//
// Lifecycle: Create() starts the thread (own loop); Shutdown() (or the
// destructor) stops it and completes every outstanding request with
// kCancelled.
// Thread-safety: Submit, SetEndpoints, Drain, notify_fd and Stats may be
// called from any thread; Shutdown too with a loop of its own, and must not
// race the destructor. On the caller's loop: Pump() and Shutdown() on the
// loop's thread (or once it no longer runs); a Submit or SetEndpoints from
// another thread wakes the loop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/base/clock.h"
#include "common/base/event_loop.h"
#include "common/base/json.h"
#include "common/base/status.h"
#include "common/llm/api_key.h"

namespace matrix::llm {

// One per model in the pipeline.
struct PoolConfig {
  // Model key in the pipeline; unique, non-empty.
  std::string name;
  // Base URLs, e.g. "http://127.0.0.1:8000/v1"; at least one unless
  // allow_no_endpoints. Requests go to <base>/chat/completions.
  std::vector<std::string> endpoints;
  // The pool may have no endpoint (at creation or after SetEndpoints); its
  // requests wait for one, each at most outage_s (see the class comment).
  bool allow_no_endpoints = false;
  // Endpoints added by SetEndpoints (new or back from retirement) take user
  // requests only after a successful health probe.
  bool probe_new_endpoints = true;
  // "model" put in every request body; empty keeps the body's own.
  std::string model;
  // Bearer token; empty sends no Authorization header.
  std::string api_key;
  // Requests in flight per endpoint (>= 1); more wait in the pool's queue.
  // With adaptive_concurrency this is the ceiling of the endpoint's limit.
  int max_concurrency_per_endpoint = 256;
  // Whole-request and connect timeouts of one attempt, seconds (> 0).
  double timeout_s = 120;
  double connect_timeout_s = 10;
  // Patience with one attempt: the first waits at most patience_factor times
  // the endpoint's mean success latency (at least min_patience_s), each retry
  // twice as long as the one before, never more than timeout_s; 0 disables
  // (every attempt gets timeout_s), as it is until the endpoint has answered
  // 100 requests. A request the server never answers costs seconds, not the
  // whole timeout.
  double patience_factor = 8;
  double min_patience_s = 3;
  // How long requests wait while no endpoint of the pool can be reached
  // (connection refused, unknown host, every breaker open), seconds; 0 means
  // timeout_s. Attempts that could not connect use none of max_retries: an
  // outage pauses the pool's work instead of failing it.
  double outage_s = 0;
  // Retries after the first attempt (>= 0).
  int max_retries = 4;
  // Retry n waits uniform [0, min(backoff_max_s, backoff_base_s * 2^(n-1))),
  // or the server's Retry-After on 429/503, capped at 4 * backoff_max_s.
  double backoff_base_s = 0.5;
  double backoff_max_s = 30;
  // Route requests that carry a sticky_key to one endpoint while it is healthy.
  bool sticky = false;
  // Consecutive failed attempts (5xx, timeouts, connection errors, malformed
  // answers) that open an endpoint's circuit breaker, and the time from the
  // last failure to its first health probe (also the interval between failed
  // probes, at least 0.1 s).
  int breaker_failures = 5;
  double breaker_cooldown_s = 10;
  // Adaptive concurrency per endpoint (AIMD, see the class comment); false
  // keeps every endpoint's limit at max_concurrency_per_endpoint.
  bool adaptive_concurrency = true;
  // Factor applied to an endpoint's limit on an overload answer (429, 503) or
  // a timeout, in (0, 1).
  double aimd_decrease = 0.5;
  // Mean success latency, seconds, above which an endpoint's limit stops
  // growing and shrinks by 0.9 per window (>= 0; 0 turns this signal off).
  double latency_target_s = 0;
};

struct ChatRequest {
  uint64_t tag = 0;        // caller's id, echoed in the result
  std::string pool;        // PoolConfig::name
  Json body;               // chat-completions body (messages, sampling...); "model" filled in
  std::string sticky_key;  // e.g. the task id; used when the pool is sticky
  // When set: the body's "messages", already serialized (a JSON array), sent
  // after the members of `body`, which then holds no "messages".
  std::string messages_json;
};

struct ChatResult {
  uint64_t tag = 0;
  // OK; kInvalidArgument (non-retryable answer such as 400 context length, a
  // bad body or an unknown pool); kUnavailable (retries exhausted);
  // kDeadlineExceeded (retries exhausted and the last attempt timed out, or
  // no endpoint could take it within timeout_s: see the class comment);
  // kCancelled (client shut down first).
  Status status;
  int http_status = 0;  // of the last attempt; 0 when no HTTP answer came
  std::string content;  // assistant text ("" when only tool calls)
  Json tool_calls;      // array, or null when none
  std::string finish_reason;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::string endpoint;    // base URL of the last attempt (user-info removed)
  int attempts = 0;        // HTTP attempts made
  int64_t latency_ns = 0;  // Submit() to result, queueing and retries included
  std::string error_body;  // the server's error text (truncated, secrets removed)
  // The call failed because no endpoint of its pool could be reached for
  // outage_s (not because of the request): callers should not charge it.
  bool outage = false;
  Json raw;  // response body with choices cut to the first (usage, logprobs, token ids kept)
};

// One endpoint of a pool as the client sees it now.
struct EndpointStats {
  std::string pool, url;  // url without user-info
  int in_flight = 0;      // user attempts in flight (probes not included)
  int64_t requests = 0;   // user attempts started
  int64_t errors = 0;     // user attempts that failed (any non-success answer or transport error)
  int64_t retries = 0;    // user attempts that were retries
  int64_t probes = 0;     // health probes sent
  int64_t probes_failed = 0;  // health probes that did not succeed
  bool active = true;         // false once retired by SetEndpoints
  // Takes user requests under normal routing: admitted (first probe passed
  // or not needed) and circuit breaker closed.
  bool healthy = true;
  // "healthy"; "unhealthy" (breaker open); "probing" (added, waiting for its
  // first successful probe); "retired".
  std::string state = "healthy";
  // Current adaptive limit on requests in flight, in
  // [1, max_concurrency_per_endpoint]; the endpoint takes floor() of it.
  double concurrency_limit = 0;
};

// What the worker needs from a chat-completions client: requests in, results
// out through an eventfd. LlmClient serves it over HTTP; FakeChatService
// (fake_chat_service.h) answers from a function, for tests of its callers.
// Thread-safety: every method on the caller's loop thread.
class ChatService {
 public:
  virtual ~ChatService() = default;
  // Queues a request; never blocks. Every request produces exactly one result.
  virtual void Submit(ChatRequest req) = 0;
  // Replaces the endpoints of `pool` (see LlmClient::SetEndpoints).
  virtual Status SetEndpoints(const std::string& pool, std::vector<std::string> base_urls) = 0;
  // Appends completed results to *out, clears notify_fd, returns how many.
  virtual size_t Drain(std::vector<ChatResult>* out) = 0;
  // Polls readable while results are waiting; -1 for a client on the
  // caller's loop, whose results the loop drains every turn.
  virtual int notify_fd() const = 0;
  // A client on the caller's loop does its due work here, once per turn of
  // the loop before it waits. Returns how long the loop may wait before the
  // next turn, ms; -1: no limit (nothing to do).
  virtual int Pump() { return -1; }
  // Every request still open completes with kCancelled. Idempotent.
  virtual void Shutdown() = 0;
  virtual std::vector<EndpointStats> Stats() const = 0;
};

class LlmClient final : public ChatService {
 public:
  // InvalidArgument naming the pool and field for a bad configuration;
  // Internal when libcurl or the eventfd cannot be set up.
  // `loop`: the caller's EventLoop to run on; null: a loop and a thread of
  // its own. REQUIRES: clock and loop outlive the client.
  static StatusOr<std::unique_ptr<LlmClient>> Create(std::vector<PoolConfig> pools,
                                                     const Clock* clock,
                                                     EventLoop* loop = nullptr);
  ~LlmClient() override;
  LlmClient(const LlmClient&) = delete;
  LlmClient& operator=(const LlmClient&) = delete;

  // Queues a request; never blocks on the network. Every request produces
  // exactly one result; an unknown pool gives kInvalidArgument, a request
  // submitted after Shutdown() gives kCancelled.
  void Submit(ChatRequest req) override;

  // Replaces the endpoints of `pool` with `base_urls` (see the class comment);
  // applied on the client thread shortly after the call returns (Stats()
  // shows it then). InvalidArgument for an unknown pool, an invalid or
  // non-http(s) URL, or an empty list without allow_no_endpoints (nothing is
  // changed then); kCancelled after Shutdown(). Never blocks on the network.
  Status SetEndpoints(const std::string& pool, std::vector<std::string> base_urls) override;

  // Appends completed results to *out, clears notify_fd, returns how many were
  // appended. Non-blocking.
  size_t Drain(std::vector<ChatResult>* out) override;

  // Own loop: an eventfd that polls readable while results are waiting.
  // On the caller's loop: -1.
  int notify_fd() const override;

  // On the caller's loop: takes what was submitted, fires due timers and
  // starts what can start (the loop's handlers serve the sockets); results
  // are then waiting for Drain(). Returns the longest wait until the next
  // turn, ms (-1 after Shutdown). With a loop of its own: does nothing and
  // returns -1.
  int Pump() override;

  // Stops the client thread; every request still queued, waiting for a retry or
  // in flight completes with kCancelled and can be drained. Idempotent.
  void Shutdown() override;

  using EndpointStats = llm::EndpointStats;
  std::vector<EndpointStats> Stats() const override;

  class Impl;

 private:
  explicit LlmClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace matrix::llm
