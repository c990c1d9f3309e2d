// LlmClient implementation on libcurl's multi interface.
//
// Threads: the caller's threads only touch `submit_mu_`-guarded submissions
// and endpoint updates, `done_mu_`-guarded results, the eventfd, the
// endpoint lists (read under `endpoints_mu_`) and the endpoints' atomic
// counters. Everything else (the multi handle's transfers, balancers, pool
// queues, the retry timer heap, live calls and probes) belongs to the client
// thread, which loops:
//   apply endpoint updates -> accept submissions -> fire due retry timers
//   -> send due health probes -> expire requests of pools without endpoints
//   -> dispatch queued requests -> run curl's timer when due -> epoll_wait
//   until a socket, curl's timer, the next retry, probe or expiry, or a
//   wake-up (the wake eventfd, written by Submit/SetEndpoints/Shutdown) ->
//   curl_multi_socket_action on each ready socket -> reap finished transfers.
// libcurl tells the thread which sockets to watch (CURLMOPT_SOCKETFUNCTION,
// watched on the EventLoop) and when its next timeout is
// (CURLMOPT_TIMERFUNCTION), so a wake-up costs in proportion to the sockets
// that are ready, not to the thousands of connections open.
// "The client thread" is the thread of the EventLoop the client runs on: its
// own (no loop given to Create) or the caller's, whose turns call Pump(),
// under `pump_mu_`, and whose handlers serve the sockets. The loop's wake-up
// is written only by threads other than the loop's.
// Invariants (client thread):
//   - every live Call is in exactly one place: a pool's `waiting` queue, the
//     timer heap, or the multi handle (call->easy != nullptr); every probe is
//     in the multi handle;
//   - an endpoint's balancer in_flight equals the number of its user calls in
//     the multi handle, which never exceeds max_concurrency_per_endpoint;
//   - a pool's endpoints, limiters and balancer entries share indices; the
//     lists only grow (retired endpoints stay);
//   - an endpoint's balancer cap is its limiter's cap(); an attempt starts
//     only while in_flight is below it (a decrease lets the attempts already
//     in flight finish).
#include "common/llm/llm_client.h"

#include <curl/curl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <queue>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/base/log.h"
#include "common/llm/chat_response.h"
#include "common/llm/concurrency_limiter.h"
#include "common/llm/endpoint_balancer.h"
#include "common/llm/endpoint_directory.h"
#include "common/llm/retry_policy.h"

namespace matrix::llm {
namespace {

constexpr size_t kMaxResponseBytes = 64u << 20;  // larger answers are refused
constexpr size_t kMaxErrorText = 2048;           // error_body and messages are cut here
constexpr int kMaxPollMs = 1000;                 // idle wake-up interval of the client thread
// While retries or cool-downs are pending the thread re-reads the clock at
// least this often, so an injected clock that jumps is noticed promptly.
constexpr int kTimerPollMs = 100;
constexpr size_t kMaxIdleEasyHandles = 4096;

// "http://user:pw@host/v1" -> "http://host/v1".
std::string StripUserInfo(const std::string& url) {
  size_t scheme = url.find("://");
  size_t start = scheme == std::string::npos ? 0 : scheme + 3;
  size_t end = url.find_first_of("/?#", start);
  if (end == std::string::npos) end = url.size();
  size_t at = url.rfind('@', end);
  if (at == std::string::npos || at < start) return url;
  return url.substr(0, start) + url.substr(at + 1);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string FormatSeconds(double s) {
  std::ostringstream out;
  out << s;
  return out.str();
}

// A base URL checked for use as an endpoint.
struct EndpointUrl {
  std::string url;      // as given, trailing '/' removed; the endpoint's identity
  std::string display;  // without user-info, secrets redacted
  std::string host;     // lower-cased
};

// InvalidArgument naming the pool, the list position and the URL (without
// user-info) when `url` is not an http(s) URL with a host; Internal when out
// of memory.
StatusOr<EndpointUrl> CheckEndpointUrl(std::string url, const PoolConfig& cfg, size_t index) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  EndpointUrl out;
  out.display = RedactSecrets(StripUserInfo(url), cfg.api_key);
  const std::string where =
      "llm pool '" + cfg.name + "' endpoint " + std::to_string(index) + " (" + out.display + ")";
  auto parts = ParseUrl(url);
  if (!parts.ok() && parts.status().code() == StatusCode::kInternal) return Internal("out of memory parsing URLs");
  if (!parts.ok()) return InvalidArgument(where + " is not a valid URL");
  if (parts->scheme != "http" && parts->scheme != "https")
    return InvalidArgument(where + ": only http and https URLs are supported");
  out.url = std::move(url);
  out.host = parts->host;
  return out;
}

struct Endpoint {
  std::string url;              // identity: the base URL as configured, trailing '/' removed
  std::string display;          // base URL without user-info
  std::string host;             // lower-cased, for connection limits
  std::string completions_url;  // base URL + "/chat/completions"
  std::atomic<int> in_flight{0};
  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> retries{0};
  std::atomic<int64_t> probes{0};
  std::atomic<int64_t> probes_failed{0};
  // Mirrors of the balancer's state, for Stats().
  std::atomic<bool> active{true};
  std::atomic<bool> admitted{true};
  std::atomic<bool> healthy{true};
  std::atomic<double> concurrency_limit{0};
};

struct Call;

struct Pool {
  PoolConfig cfg;  // immutable after Init
  AimdOptions aimd;
  std::string probe_payload;  // the health probe's body
  // Grows on the client thread under Impl::endpoints_mu_; read there without
  // it, elsewhere with it. Entries never move (unique_ptr).
  std::vector<std::unique_ptr<Endpoint>> endpoints;
  std::unordered_map<std::string, int> by_url;  // client thread only; Endpoint::url -> index
  std::unique_ptr<EndpointBalancer> balancer;   // client thread only
  std::vector<ConcurrencyLimiter> limiters;     // client thread only; one per endpoint
  std::deque<Call*> waiting;                    // client thread only; FIFO
  // Client thread only: some endpoint takes requests, and when the last one
  // stopped doing so (creation time when there never was one).
  bool serving = false;
  int64_t unserved_since_ns = 0;
  curl_slist* headers = nullptr;  // shared by all of the pool's transfers
};

// How long one attempt may take. A user request's first attempt waits at
// most patience_factor times the endpoint's mean success latency, and at
// least twice the longest answer it gave lately (long generations of a
// long-tailed length distribution are not cut off and asked again) and
// min_patience_s; each further attempt twice as long as the one before, and
// never more than timeout_s: a request the server forgot (hung) is retried
// after seconds, while a slow, legitimate one still gets the whole timeout
// after a few tries. Until the endpoint has answered kPatienceWarmup requests
// every attempt gets timeout_s.
double AttemptTimeoutSeconds(const Call& call, const Pool& pool);

// How long the pool's requests wait while no endpoint can be reached.
double OutageSeconds(const Pool& pool) { return pool.cfg.outage_s > 0 ? pool.cfg.outage_s : pool.cfg.timeout_s; }

struct Call {
  uint64_t tag = 0;
  Pool* pool = nullptr;
  bool health_probe = false;  // a probe, not a user request: produces no result
  std::string sticky_key;
  std::string payload;  // serialized request body
  int64_t submit_ns = 0;
  int attempts = 0;
  int unreachable_attempts = 0;      // attempts that could not connect (not charged to max_retries)
  int64_t unreachable_since_ns = -1;  // when the current run of them began; -1: none
  bool outage = false;                // ended because no endpoint was reachable (ChatResult::outage)
  int endpoint = -1;  // endpoint of the current or last attempt
  int64_t attempt_start_ns = 0;
  CURL* easy = nullptr;  // non-null while in the multi handle
  std::string response;
  bool response_too_large = false;
  std::string retry_after;
  char errbuf[CURL_ERROR_SIZE];
  // Last failed attempt.
  int last_http = 0;
  bool last_timed_out = false;
  std::string last_error;
  std::string last_error_body;
};

constexpr int64_t kPatienceWarmup = 100;  // successes of an endpoint before its patience applies

double AttemptTimeoutSeconds(const Call& call, const Pool& pool) {
  const double timeout = pool.cfg.timeout_s;
  if (call.health_probe || pool.cfg.patience_factor <= 0 || call.endpoint < 0 ||
      static_cast<size_t>(call.endpoint) >= pool.limiters.size())
    return timeout;
  const ConcurrencyLimiter& limiter = pool.limiters[call.endpoint];
  const int64_t mean_ns = limiter.mean_latency_ns();
  // The first answers come before the endpoint is loaded and say little about
  // how long answers take under load: no patience until the mean is settled.
  if (mean_ns <= 0 || limiter.successes() < kPatienceWarmup) return timeout;
  double patience = std::max({pool.cfg.min_patience_s, pool.cfg.patience_factor * static_cast<double>(mean_ns) / 1e9,
                              2 * static_cast<double>(limiter.slowest_latency_ns()) / 1e9});
  for (int i = 1; i < call.attempts && patience < timeout; ++i) patience *= 2;
  return std::min(timeout, patience);
}

size_t OnBody(char* data, size_t size, size_t nmemb, void* user) {
  Call* call = static_cast<Call*>(user);
  size_t n = size * nmemb;
  if (call->response.size() + n > kMaxResponseBytes) {
    call->response_too_large = true;
    return 0;
  }
  call->response.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t nmemb, void* user) {
  Call* call = static_cast<Call*>(user);
  size_t n = size * nmemb;
  std::string line(data, n);
  if (line.compare(0, 5, "HTTP/") == 0) {
    call->retry_after.clear();  // a new response (e.g. after 100 Continue)
    return n;
  }
  static const char kName[] = "retry-after:";
  constexpr size_t kLen = sizeof(kName) - 1;
  if (line.size() > kLen && Lower(line.substr(0, kLen)) == kName) {
    std::string value = line.substr(kLen);
    size_t b = value.find_first_not_of(" \t");
    size_t e = value.find_last_not_of(" \t\r\n");
    call->retry_after = b == std::string::npos ? "" : value.substr(b, e - b + 1);
  }
  return n;
}

struct Timer {
  int64_t due_ns;
  uint64_t seq;
  Call* call;
  bool operator>(const Timer& o) const {
    return due_ns != o.due_ns ? due_ns > o.due_ns : seq > o.seq;
  }
};

struct Submission {
  ChatRequest req;
  int64_t submit_ns;
};

struct EndpointUpdate {
  Pool* pool;
  std::vector<EndpointUrl> urls;  // checked, without duplicates
};

std::once_flag g_curl_init_once;
CURLcode g_curl_init_code = CURLE_OK;

}  // namespace

class LlmClient::Impl {
 public:
  Impl(const Clock* clock, EventLoop* loop)
      : clock_(clock), loop_(loop), own_thread_(loop == nullptr), rng_(std::random_device{}()) {}
  ~Impl();

  Status Init(std::vector<PoolConfig> pools);
  void Submit(ChatRequest req);
  Status SetEndpoints(const std::string& pool, std::vector<std::string> base_urls);
  size_t Drain(std::vector<ChatResult>* out);
  int notify_fd() const { return own_thread_ ? event_fd_ : -1; }
  int Pump();
  void Shutdown();
  std::vector<LlmClient::EndpointStats> Stats() const;

 private:
  // The client's own thread: turns of its own loop until Shutdown.
  void Run();
  // One turn's work before the loop waits; false once shutting down.
  bool Turn();
  // Takes what Submit and SetEndpoints queued; false once shutting down.
  bool TakeWork();
  // Timers, patience, probes, expiries, dispatch and libcurl's timer.
  void DoDueWork();
  // How long the loop may wait for a socket, ms.
  int WaitMs() const;
  // A socket libcurl watches is ready: drives it, reaps what finished.
  void OnSocketReady(curl_socket_t s, uint32_t events);
  void Accept(Submission sub);
  int AddEndpoint(Pool& pool, EndpointUrl url, bool needs_probe, int64_t now_ns);
  void ApplyEndpoints(EndpointUpdate update, int64_t now_ns);
  void UpdateConnectionLimits();
  void Publish(Pool& pool, int i);
  void RefreshServing(Pool& pool, int64_t now_ns);
  void FireTimers(int64_t now_ns);
  void SendDueProbes(int64_t now_ns);
  void StartProbe(Pool& pool, int endpoint, int64_t now_ns);
  void ExpireUnserved(int64_t now_ns);
  int64_t UnservedDeadline(const Pool& pool, const Call& call) const;
  void DispatchAll(int64_t now_ns);
  void StartAttempt(Call* call, int endpoint, int64_t now_ns);
  CURL* PrepareEasy(Call* call, const Pool& pool, const Endpoint& ep);
  // Adds the call's transfer to the multi handle; a transfer that cannot
  // start completes at once through `done` (OnAttemptDone or OnProbeDone).
  void StartTransfer(Call* call, const Pool& pool, const Endpoint& ep, void (Impl::*done)(Call*, CURLcode, long));
  void ReapFinished();
  void OnAttemptDone(Call* call, CURLcode code, long http);
  void OnProbeDone(Call* call, CURLcode code, long http);
  void AdaptLimit(Call* call, bool success, bool overload, int64_t now_ns);
  void CompleteCall(Call* call, Status status, ParsedCompletion* parsed, int http);
  void CancelEverything();
  int PollTimeoutMs(int64_t now_ns) const;
  // libcurl's callbacks: which events to watch on a socket, and when to call
  // curl_multi_socket_action(CURL_SOCKET_TIMEOUT) next.
  static int OnCurlSocket(CURL* easy, curl_socket_t s, int what, void* userp, void* socketp);
  static int OnCurlTimer(CURLM* multi, long timeout_ms, void* userp);
  void RunCurlTimerIfDue();
  void SweepPatience(int64_t now_ns);
  void WakeUp();  // any thread
  CURL* TakeEasy();
  void ReleaseEasy(CURL* easy);
  void PushResult(ChatResult result);
  std::string Redact(const Pool& pool, const std::string& text) const {
    return RedactSecrets(text, pool.cfg.api_key);
  }

  const Clock* clock_;
  EventLoop* loop_;        // the loop the client runs on: own_loop_ or the caller's
  std::unique_ptr<EventLoop> own_loop_;
  const bool own_thread_;  // on own_loop_; else every call is on the caller's loop thread
  // On the caller's loop: Pump() and Shutdown() hold pump_mu_; cancelled_
  // once CancelEverything() has run.
  std::mutex pump_mu_;
  bool cancelled_ = false;
  std::unordered_set<curl_socket_t> watched_;  // sockets libcurl has on loop_
  std::vector<Submission> batch_;          // TakeWork's scratch
  std::vector<EndpointUpdate> applying_;   // TakeWork's scratch
  CURLM* multi_ = nullptr;
  int event_fd_ = -1;  // own thread: results waiting (the caller polls it)
  int64_t curl_timer_due_ns_ = -1;  // steady clock; -1: none (client thread)
  int64_t next_sweep_ns_ = 0;       // next SweepPatience() (client thread)
  std::vector<std::unique_ptr<Pool>> pools_;        // immutable after Init
  std::unordered_map<std::string, Pool*> by_name_;  // immutable after Init
  mutable std::mutex endpoints_mu_;                 // guards growth of Pool::endpoints
  std::thread thread_;

  std::mutex submit_mu_;
  // GUARDED_BY(submit_mu_). Invariant: while non-empty, a WakeUp() has
  // been made since the client thread last emptied it.
  std::vector<Submission> submitted_;
  std::vector<EndpointUpdate> updates_;  // GUARDED_BY(submit_mu_); a wake-up follows each
  bool stopping_ = false;                // GUARDED_BY(submit_mu_)
  std::mutex join_mu_;                   // serializes Shutdown's join

  std::mutex done_mu_;
  std::vector<ChatResult> done_;  // GUARDED_BY(done_mu_)

  // Client thread only.
  std::unordered_map<Call*, std::unique_ptr<Call>> live_;
  std::unordered_map<Call*, std::unique_ptr<Call>> probes_;  // health probes in flight
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  uint64_t timer_seq_ = 0;
  std::vector<CURL*> idle_easy_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> unit_{0.0, 1.0};
};

// ---------------------------------------------------------------------------
// Set-up and tear-down.

Status LlmClient::Impl::Init(std::vector<PoolConfig> pools) {
  if (clock_ == nullptr) return InvalidArgument("LlmClient needs a clock");
  std::call_once(g_curl_init_once, [] { g_curl_init_code = curl_global_init(CURL_GLOBAL_ALL); });
  if (g_curl_init_code != CURLE_OK)
    return Internal(std::string("libcurl initialisation failed: ") +
                    curl_easy_strerror(g_curl_init_code));

  const int64_t now = clock_->NowNanos();
  for (PoolConfig& cfg : pools) {
    const std::string where = "llm pool '" + cfg.name + "'";
    if (cfg.name.empty()) return InvalidArgument("llm pool with an empty name");
    if (by_name_.count(cfg.name)) return InvalidArgument(where + " is defined twice");
    if (cfg.endpoints.empty() && !cfg.allow_no_endpoints)
      return InvalidArgument(where + ": endpoints is empty");
    if (cfg.max_concurrency_per_endpoint < 1)
      return InvalidArgument(where + ": max_concurrency_per_endpoint must be >= 1");
    if (!(cfg.timeout_s > 0)) return InvalidArgument(where + ": timeout_s must be > 0");
    if (!(cfg.connect_timeout_s > 0))
      return InvalidArgument(where + ": connect_timeout_s must be > 0");
    if (cfg.max_retries < 0) return InvalidArgument(where + ": max_retries must be >= 0");
    if (!(cfg.backoff_base_s >= 0) || !(cfg.backoff_max_s >= 0))
      return InvalidArgument(where + ": backoff_base_s and backoff_max_s must be >= 0");
    if (cfg.breaker_failures < 1) return InvalidArgument(where + ": breaker_failures must be >= 1");
    if (!(cfg.breaker_cooldown_s >= 0))
      return InvalidArgument(where + ": breaker_cooldown_s must be >= 0");
    if (!(cfg.aimd_decrease > 0 && cfg.aimd_decrease < 1))
      return InvalidArgument(where + ": aimd_decrease must be in (0, 1)");
    if (!(cfg.latency_target_s >= 0) || std::isinf(cfg.latency_target_s))
      return InvalidArgument(where + ": latency_target_s must be >= 0");
    for (char c : cfg.api_key) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
        return InvalidArgument(where + ": api_key contains control characters");
    }
    std::vector<EndpointUrl> urls;
    std::unordered_set<std::string> seen;
    for (size_t i = 0; i < cfg.endpoints.size(); ++i) {
      StatusOr<EndpointUrl> u = CheckEndpointUrl(cfg.endpoints[i], cfg, i);
      if (!u.ok()) return u.status();
      if (seen.insert(u.value().url).second) urls.push_back(std::move(u).value());
    }

    auto pool = std::make_unique<Pool>();
    BreakerOptions breaker;
    breaker.failure_threshold = cfg.breaker_failures;
    // At most a few decades, so cool-down arithmetic cannot overflow.
    breaker.cooldown_ns = static_cast<int64_t>(std::min(cfg.breaker_cooldown_s, 1e9) * 1e9);
    pool->balancer = std::make_unique<EndpointBalancer>(cfg.max_concurrency_per_endpoint, breaker);
    pool->aimd.enabled = cfg.adaptive_concurrency;
    pool->aimd.ceiling = cfg.max_concurrency_per_endpoint;
    pool->aimd.decrease = cfg.aimd_decrease;
    pool->aimd.latency_target_ns = static_cast<int64_t>(cfg.latency_target_s * 1e9);
    Json probe = {{"messages", Json::array({{{"role", "user"}, {"content", "ping"}}})},
                  {"max_tokens", 1}};
    if (!cfg.model.empty()) probe["model"] = cfg.model;
    pool->probe_payload = DumpJson(probe);
    const std::vector<std::string> header_lines = {
        "Content-Type: application/json", "Accept: application/json",
        "Expect:",  // no 100-continue round trip for large prompts
    };
    for (const std::string& h : header_lines) {
      curl_slist* next = curl_slist_append(pool->headers, h.c_str());
      if (next == nullptr) {
        curl_slist_free_all(pool->headers);
        return Internal("out of memory building headers");
      }
      pool->headers = next;
    }
    if (!cfg.api_key.empty()) {
      std::string auth = "Authorization: Bearer " + cfg.api_key;
      curl_slist* next = curl_slist_append(pool->headers, auth.c_str());
      std::fill(auth.begin(), auth.end(), '\0');
      if (next == nullptr) {
        curl_slist_free_all(pool->headers);
        return Internal("out of memory building headers");
      }
      pool->headers = next;
    }
    pool->cfg = std::move(cfg);
    // Configured endpoints take traffic at once.
    for (EndpointUrl& u : urls) AddEndpoint(*pool, std::move(u), /*needs_probe=*/false, now);
    pool->serving = pool->balancer->HasServing();
    pool->unserved_since_ns = now;
    by_name_[pool->cfg.name] = pool.get();
    pools_.push_back(std::move(pool));
  }

  if (own_thread_) {
    event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd_ < 0) return Internal(std::string("eventfd: ") + std::strerror(errno));
    MATRIX_ASSIGN_OR_RETURN(own_loop_, EventLoop::Create(clock_));
    loop_ = own_loop_.get();
  }
  multi_ = curl_multi_init();
  if (multi_ == nullptr) return Internal("curl_multi_init failed");
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &Impl::OnCurlSocket);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &Impl::OnCurlTimer);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  UpdateConnectionLimits();

  if (own_thread_) thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

int LlmClient::Impl::AddEndpoint(Pool& pool, EndpointUrl url, bool needs_probe, int64_t now_ns) {
  auto ep = std::make_unique<Endpoint>();
  ep->completions_url = url.url + "/chat/completions";
  ep->url = std::move(url.url);
  ep->display = std::move(url.display);
  ep->host = std::move(url.host);
  const int idx = pool.balancer->Add(ep->display, needs_probe, now_ns);
  pool.limiters.emplace_back(pool.aimd);
  ep->concurrency_limit.store(pool.limiters.back().limit());
  pool.by_url[ep->url] = idx;
  {
    std::lock_guard<std::mutex> lock(endpoints_mu_);
    pool.endpoints.push_back(std::move(ep));
  }
  Publish(pool, idx);
  return idx;
}

void LlmClient::Impl::UpdateConnectionLimits() {
  // Keyed by host alone: a safe upper bound whether or not libcurl counts
  // ports separately. Every endpoint ever added counts (a retired one may
  // still finish attempts), plus one connection each for its probe.
  std::map<std::string, long> host_caps;
  long total_cap = 0;
  for (const auto& pool : pools_) {
    const long per_endpoint = pool->cfg.max_concurrency_per_endpoint + 1L;
    for (const auto& ep : pool->endpoints) {
      host_caps[ep->host] += per_endpoint;
      total_cap += per_endpoint;
    }
  }
  long max_host = 1;
  for (const auto& [host, cap] : host_caps) max_host = std::max(max_host, cap);
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, max_host);
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, std::max(total_cap, 16L));
}

LlmClient::Impl::~Impl() {
  Shutdown();
  for (CURL* e : idle_easy_) curl_easy_cleanup(e);
  idle_easy_.clear();
  if (multi_ != nullptr) curl_multi_cleanup(multi_);  // may still call OnCurlSocket
  // What libcurl closed without a word leaves the loop too.
  for (curl_socket_t s : watched_) loop_->Unwatch(s);
  for (auto& pool : pools_) curl_slist_free_all(pool->headers);
  if (event_fd_ >= 0) ::close(event_fd_);
}

void LlmClient::Impl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(submit_mu_);
    if (!stopping_) {
      stopping_ = true;
      if (multi_ != nullptr) WakeUp();
    }
  }
  std::lock_guard<std::mutex> lock(join_mu_);
  if (thread_.joinable()) thread_.join();
  if (!own_thread_) {
    std::lock_guard<std::mutex> pump(pump_mu_);
    if (!cancelled_) {
      cancelled_ = true;
      TakeWork();  // what was submitted and not yet taken is cancelled too
      CancelEverything();
    }
  }
}

// ---------------------------------------------------------------------------
// Caller-side API.

void LlmClient::Impl::Submit(ChatRequest req) {
  const int64_t now = clock_->NowNanos();
  if (by_name_.find(req.pool) == by_name_.end()) {
    ChatResult r;
    r.tag = req.tag;
    r.status = InvalidArgument("unknown llm pool '" + req.pool + "'");
    PushResult(std::move(r));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(submit_mu_);
    if (!stopping_) {
      // A non-empty queue already has a wake-up pending since the client
      // thread last took it, so a burst of submissions costs one wake-up.
      bool was_empty = submitted_.empty();
      submitted_.push_back(Submission{std::move(req), now});
      if (was_empty) WakeUp();
      return;
    }
  }
  ChatResult r;
  r.tag = req.tag;
  r.status = Cancelled("llm client is shut down");
  PushResult(std::move(r));
}

Status LlmClient::Impl::SetEndpoints(const std::string& name, std::vector<std::string> base_urls) {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return InvalidArgument("unknown llm pool '" + name + "'");
  Pool* pool = it->second;
  const PoolConfig& cfg = pool->cfg;  // immutable after Init
  EndpointUpdate update{pool, {}};
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < base_urls.size(); ++i) {
    StatusOr<EndpointUrl> u = CheckEndpointUrl(std::move(base_urls[i]), cfg, i);
    if (!u.ok()) return u.status();
    if (seen.insert(u.value().url).second) update.urls.push_back(std::move(u).value());
  }
  if (update.urls.empty() && !cfg.allow_no_endpoints)
    return InvalidArgument("llm pool '" + name +
                           "': endpoints is empty (the pool does not allow_no_endpoints)");
  std::lock_guard<std::mutex> lock(submit_mu_);
  if (stopping_) return Cancelled("llm client is shut down");
  updates_.push_back(std::move(update));
  WakeUp();
  return Status::Ok();
}

void LlmClient::Impl::PushResult(ChatResult result) {
  std::lock_guard<std::mutex> lock(done_mu_);
  bool was_empty = done_.empty();
  done_.push_back(std::move(result));
  if (was_empty && own_thread_) {
    uint64_t one = 1;
    ssize_t n = ::write(event_fd_, &one, sizeof(one));
    (void)n;  // EAGAIN only when the counter is saturated: still readable
  }
}

size_t LlmClient::Impl::Drain(std::vector<ChatResult>* out) {
  std::lock_guard<std::mutex> lock(done_mu_);
  size_t n = done_.size();
  for (ChatResult& r : done_) out->push_back(std::move(r));
  done_.clear();
  if (own_thread_) {
    uint64_t value;
    ssize_t ignored = ::read(event_fd_, &value, sizeof(value));
    (void)ignored;  // EAGAIN when nothing was signalled
  }
  return n;
}

std::vector<LlmClient::EndpointStats> LlmClient::Impl::Stats() const {
  std::vector<LlmClient::EndpointStats> out;
  std::lock_guard<std::mutex> lock(endpoints_mu_);
  for (const auto& pool : pools_) {
    for (const auto& ep : pool->endpoints) {
      LlmClient::EndpointStats s;
      s.pool = pool->cfg.name;
      s.url = ep->display;
      s.in_flight = ep->in_flight.load();
      s.requests = ep->requests.load();
      s.errors = ep->errors.load();
      s.retries = ep->retries.load();
      s.probes = ep->probes.load();
      s.probes_failed = ep->probes_failed.load();
      s.active = ep->active.load();
      s.healthy = ep->healthy.load();
      s.state = !s.active              ? "retired"
                : !ep->admitted.load() ? "probing"
                : s.healthy            ? "healthy"
                                       : "unhealthy";
      s.concurrency_limit = ep->concurrency_limit.load();
      out.push_back(std::move(s));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Client thread.

namespace {
int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

void LlmClient::Impl::WakeUp() {
  // A submission made on the loop's thread goes out in the loop's next turn;
  // one from elsewhere wakes the loop.
  if (!loop_->InLoopThread()) loop_->Wake();
}

int LlmClient::Impl::OnCurlSocket(CURL*, curl_socket_t s, int what, void* userp, void* socketp) {
  auto* self = static_cast<Impl*>(userp);
  if (what == CURL_POLL_REMOVE) {
    self->loop_->Unwatch(s);
    self->watched_.erase(s);
    curl_multi_assign(self->multi_, s, nullptr);
    return 0;
  }
  const uint32_t events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
  // socketp is non-null once the socket is watched: only its events change.
  if (socketp != nullptr && self->loop_->Modify(s, events).ok()) return 0;
  Status st = self->loop_->Watch(s, events, [self, s](uint32_t ready) { self->OnSocketReady(s, ready); });
  if (!st.ok()) {
    LOG_ERROR << "llm client: " << st.message();
    return -1;
  }
  self->watched_.insert(s);
  if (socketp == nullptr) curl_multi_assign(self->multi_, s, self);
  return 0;
}

int LlmClient::Impl::OnCurlTimer(CURLM*, long timeout_ms, void* userp) {
  auto* self = static_cast<Impl*>(userp);
  self->curl_timer_due_ns_ = timeout_ms < 0 ? -1 : SteadyNanos() + int64_t{timeout_ms} * 1'000'000;
  return 0;
}

void LlmClient::Impl::RunCurlTimerIfDue() {
  // New transfers set a 0 ms timer: run it at once, as often as it is re-armed
  // due (bounded: each round starts what was added before it).
  for (int round = 0; round < 8 && curl_timer_due_ns_ >= 0 && SteadyNanos() >= curl_timer_due_ns_; ++round) {
    curl_timer_due_ns_ = -1;
    int running = 0;
    CURLMcode mc = curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
    if (mc != CURLM_OK) LOG_ERROR << "llm client: curl_multi_socket_action: " << curl_multi_strerror(mc);
    ReapFinished();
    DispatchAll(clock_->NowNanos());
  }
}

void LlmClient::Impl::SweepPatience(int64_t now_ns) {
  // Patience is judged while the attempt runs, not fixed when it starts: the
  // longest answer of late grows while long generations finish, so an early
  // attempt is not cut off by what the first, short answers suggested.
  if (now_ns < next_sweep_ns_) return;
  next_sweep_ns_ = now_ns + kTimerPollMs * 1'000'000LL;
  std::vector<std::pair<Call*, double>> late;
  for (auto& [raw, owned] : live_) {
    if (raw->easy == nullptr || raw->health_probe) continue;
    const double patience = AttemptTimeoutSeconds(*raw, *raw->pool);
    if (static_cast<double>(now_ns - raw->attempt_start_ns) > patience * 1e9) late.emplace_back(raw, patience);
  }
  for (auto [call, patience] : late) {
    if (call->easy == nullptr) continue;
    curl_multi_remove_handle(multi_, call->easy);
    ReleaseEasy(call->easy);
    call->easy = nullptr;
    std::snprintf(call->errbuf, sizeof(call->errbuf), "no answer within %.1f s", patience);
    OnAttemptDone(call, CURLE_OPERATION_TIMEDOUT, 0);
  }
}

bool LlmClient::Impl::TakeWork() {
  bool stop;
  {
    std::lock_guard<std::mutex> lock(submit_mu_);
    batch_.swap(submitted_);
    applying_.swap(updates_);
    stop = stopping_;
  }
  for (EndpointUpdate& u : applying_) ApplyEndpoints(std::move(u), clock_->NowNanos());
  applying_.clear();
  for (Submission& sub : batch_) Accept(std::move(sub));
  batch_.clear();
  return !stop;
}

void LlmClient::Impl::DoDueWork() {
  FireTimers(clock_->NowNanos());
  SweepPatience(clock_->NowNanos());
  SendDueProbes(clock_->NowNanos());
  ExpireUnserved(clock_->NowNanos());
  DispatchAll(clock_->NowNanos());
  RunCurlTimerIfDue();
}

int LlmClient::Impl::WaitMs() const {
  int timeout = PollTimeoutMs(clock_->NowNanos());
  if (curl_timer_due_ns_ >= 0) {
    const int64_t left = std::max<int64_t>(0, curl_timer_due_ns_ - SteadyNanos());
    timeout = static_cast<int>(std::min<int64_t>(timeout, (left + 999'999) / 1'000'000));
  }
  return timeout;
}

void LlmClient::Impl::OnSocketReady(curl_socket_t s, uint32_t events) {
  const int flags = ((events & EPOLLIN) ? CURL_CSELECT_IN : 0) | ((events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                    ((events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
  int running = 0;
  CURLMcode mc = curl_multi_socket_action(multi_, s, flags, &running);
  if (mc != CURLM_OK) LOG_ERROR << "llm client: curl_multi_socket_action: " << curl_multi_strerror(mc);
  ReapFinished();
}

bool LlmClient::Impl::Turn() {
  if (!TakeWork()) return false;
  DoDueWork();
  return true;
}

void LlmClient::Impl::Run() {
  loop_->EachTurn([this] {
    if (Turn()) return int64_t{WaitMs()} * 1'000'000;
    loop_->Stop();
    return int64_t{0};
  });
  loop_->Run();
  CancelEverything();
}

int LlmClient::Impl::Pump() {
  if (own_thread_) return -1;
  std::lock_guard<std::mutex> lock(pump_mu_);
  if (cancelled_) return -1;
  if (!Turn()) {
    cancelled_ = true;
    CancelEverything();
    return -1;
  }
  return WaitMs();
}

int LlmClient::Impl::PollTimeoutMs(int64_t now_ns) const {
  int64_t next = INT64_MAX;
  if (!timers_.empty()) next = timers_.top().due_ns;
  for (const auto& pool : pools_) {
    next = std::min(next, pool->balancer->NextProbeDue());
    if (!pool->serving) {
      for (const Call* call : pool->waiting) next = std::min(next, UnservedDeadline(*pool, *call));
    }
  }
  if (!live_.empty()) next = std::min(next, next_sweep_ns_);  // attempts' patience
  if (next == INT64_MAX) return kMaxPollMs;
  int64_t ms = next <= now_ns ? 0 : (next - now_ns + 999'999) / 1'000'000;
  return static_cast<int>(std::min<int64_t>(ms, kTimerPollMs));
}

void LlmClient::Impl::Accept(Submission sub) {
  Pool* pool = by_name_.at(sub.req.pool);
  auto call = std::make_unique<Call>();
  call->tag = sub.req.tag;
  call->pool = pool;
  call->sticky_key = std::move(sub.req.sticky_key);
  call->submit_ns = sub.submit_ns;
  call->errbuf[0] = '\0';
  Call* raw = call.get();
  live_.emplace(raw, std::move(call));

  Json& body = sub.req.body;
  if (!body.is_object()) {
    CompleteCall(raw, InvalidArgument("llm request body must be a JSON object"), nullptr, 0);
    return;
  }
  auto stream = body.find("stream");
  if (stream != body.end() && stream->is_boolean() && stream->get<bool>()) {
    CompleteCall(raw, InvalidArgument("streaming llm requests are not supported"), nullptr, 0);
    return;
  }
  const std::string& messages = sub.req.messages_json;
  if (!messages.empty() && (messages.front() != '[' || messages.back() != ']' || body.contains("messages"))) {
    CompleteCall(raw, InvalidArgument("llm request messages must be one JSON array, given once"), nullptr, 0);
    return;
  }
  try {
    if (!pool->cfg.model.empty()) body["model"] = pool->cfg.model;
    // Invalid UTF-8 (e.g. a model answer cut mid-character) is replaced, not fatal.
    raw->payload = DumpJson(body);
    if (!messages.empty()) {
      raw->payload.pop_back();  // '}'
      if (raw->payload.size() > 1) raw->payload.push_back(',');
      raw->payload.append("\"messages\":").append(messages).push_back('}');
    }
  } catch (const std::exception& e) {
    CompleteCall(raw,
                 InvalidArgument(std::string("llm request body cannot be encoded: ") + e.what()),
                 nullptr, 0);
    return;
  }
  pool->waiting.push_back(raw);
}

void LlmClient::Impl::FireTimers(int64_t now_ns) {
  std::vector<Call*> fired;
  while (!timers_.empty() && timers_.top().due_ns <= now_ns) {
    fired.push_back(timers_.top().call);
    timers_.pop();
  }
  // Retries were submitted before anything still queued: they go first, in due order.
  for (auto it = fired.rbegin(); it != fired.rend(); ++it) (*it)->pool->waiting.push_front(*it);
}

void LlmClient::Impl::Publish(Pool& pool, int i) {
  Endpoint& ep = *pool.endpoints[i];
  ep.active.store(pool.balancer->active(i));
  ep.admitted.store(pool.balancer->admitted(i));
  ep.healthy.store(pool.balancer->healthy(i));
}

void LlmClient::Impl::RefreshServing(Pool& pool, int64_t now_ns) {
  const bool serving = pool.balancer->HasServing();
  if (pool.serving && !serving) pool.unserved_since_ns = now_ns;
  pool.serving = serving;
}

void LlmClient::Impl::ApplyEndpoints(EndpointUpdate update, int64_t now_ns) {
  Pool& pool = *update.pool;
  EndpointBalancer& bal = *pool.balancer;
  const bool probe = pool.cfg.probe_new_endpoints;
  const std::string where = "llm pool '" + pool.cfg.name + "': endpoint ";
  std::vector<char> keep(pool.endpoints.size(), 0);
  bool added = false;
  for (EndpointUrl& u : update.urls) {
    int idx;
    auto it = pool.by_url.find(u.url);
    if (it != pool.by_url.end()) {
      idx = it->second;
      if (!bal.active(idx)) {
        bal.Reactivate(idx, probe, now_ns);
        LOG_INFO << where << pool.endpoints[idx]->display << " is back"
                 << (bal.admitted(idx) ? "" : "; it takes requests after a successful probe");
      }
    } else {
      std::string display = u.display;
      idx = AddEndpoint(pool, std::move(u), probe, now_ns);
      added = true;
      LOG_INFO << where << display << " added"
               << (probe ? "; it takes requests after a successful probe" : "");
    }
    if (keep.size() <= static_cast<size_t>(idx)) keep.resize(idx + 1, 0);
    keep[idx] = 1;
  }
  for (size_t i = 0; i < pool.endpoints.size(); ++i) {
    const int idx = static_cast<int>(i);
    if ((i < keep.size() && keep[i]) || !bal.active(idx)) continue;
    bal.Retire(idx);
    LOG_INFO << where << pool.endpoints[i]->display << " retired; " << bal.in_flight(idx)
             << " attempts in flight finish there";
  }
  for (size_t i = 0; i < pool.endpoints.size(); ++i) Publish(pool, static_cast<int>(i));
  if (added) UpdateConnectionLimits();
  RefreshServing(pool, now_ns);
}

void LlmClient::Impl::SendDueProbes(int64_t now_ns) {
  for (auto& pool : pools_) {
    if (pool->balancer->NextProbeDue() > now_ns) continue;
    for (size_t i = 0; i < pool->endpoints.size(); ++i) {
      if (pool->balancer->ProbeDue(static_cast<int>(i), now_ns))
        StartProbe(*pool, static_cast<int>(i), now_ns);
    }
  }
}

void LlmClient::Impl::StartProbe(Pool& pool, int endpoint, int64_t now_ns) {
  Endpoint& ep = *pool.endpoints[endpoint];
  auto owned = std::make_unique<Call>();
  Call* call = owned.get();
  call->health_probe = true;
  call->pool = &pool;
  call->endpoint = endpoint;
  call->payload = pool.probe_payload;
  call->submit_ns = now_ns;
  call->attempt_start_ns = now_ns;
  call->attempts = 1;
  call->errbuf[0] = '\0';
  probes_.emplace(call, std::move(owned));
  pool.balancer->OnProbeStart(endpoint);
  ep.probes.fetch_add(1);
  LOG_DEBUG << "llm pool '" << pool.cfg.name << "': health probe to " << ep.display;

  StartTransfer(call, pool, ep, &Impl::OnProbeDone);
}

int64_t LlmClient::Impl::UnservedDeadline(const Pool& pool, const Call& call) const {
  const int64_t from = std::max(call.submit_ns, pool.unserved_since_ns);
  const double wait_ns = OutageSeconds(pool) * 1e9;
  if (!(wait_ns < static_cast<double>(INT64_MAX - from))) return INT64_MAX;  // saturates
  return from + static_cast<int64_t>(wait_ns);
}

void LlmClient::Impl::ExpireUnserved(int64_t now_ns) {
  for (auto& pool : pools_) {
    if (pool->serving || pool->waiting.empty()) continue;
    std::vector<Call*> expired;
    for (auto it = pool->waiting.begin(); it != pool->waiting.end();) {
      if (UnservedDeadline(*pool, **it) <= now_ns) {
        expired.push_back(*it);
        it = pool->waiting.erase(it);
      } else {
        ++it;
      }
    }
    if (expired.empty()) continue;
    int registered = 0;
    for (size_t i = 0; i < pool->endpoints.size(); ++i)
      registered += pool->balancer->active(static_cast<int>(i));
    const std::string& name = pool->cfg.name;
    std::string why = registered == 0
                          ? "no endpoint registered for model '" + name + "'"
                          : "no endpoint of model '" + name + "' has passed its health probe (" +
                                std::to_string(registered) + " registered)";
    why += " within " + std::string(pool->cfg.outage_s > 0 ? "outage_s" : "timeout_s") + " (" +
           FormatSeconds(OutageSeconds(*pool)) + " s)";
    LOG_DEBUG << "llm pool '" << name << "': " << expired.size() << " requests expired: " << why;
    for (Call* call : expired) {
      std::string msg = "llm pool '" + name + "': " + why;
      if (!call->last_error.empty()) msg += "; last attempt: " + call->last_error;
      call->outage = true;
      CompleteCall(call, DeadlineExceeded(msg), nullptr, call->last_http);
    }
  }
}

void LlmClient::Impl::DispatchAll(int64_t now_ns) {
  for (auto& pool : pools_) {
    while (!pool->waiting.empty()) {
      Call* call = pool->waiting.front();
      std::string_view key =
          pool->cfg.sticky ? std::string_view(call->sticky_key) : std::string_view();
      int idx = pool->balancer->Pick(key, call->endpoint);
      if (idx < 0) break;
      pool->waiting.pop_front();
      StartAttempt(call, idx, now_ns);
    }
  }
}

CURL* LlmClient::Impl::TakeEasy() {
  if (!idle_easy_.empty()) {
    CURL* e = idle_easy_.back();
    idle_easy_.pop_back();
    return e;
  }
  return curl_easy_init();
}

void LlmClient::Impl::ReleaseEasy(CURL* easy) {
  if (idle_easy_.size() >= kMaxIdleEasyHandles) {
    curl_easy_cleanup(easy);
    return;
  }
  curl_easy_reset(easy);
  idle_easy_.push_back(easy);
}

void LlmClient::Impl::StartAttempt(Call* call, int endpoint, int64_t now_ns) {
  Pool& pool = *call->pool;
  Endpoint& ep = *pool.endpoints[endpoint];
  call->endpoint = endpoint;
  call->attempt_start_ns = now_ns;
  pool.balancer->OnStart(endpoint);
  ep.in_flight.fetch_add(1);
  ep.requests.fetch_add(1);
  if (call->attempts > 0) ep.retries.fetch_add(1);
  call->attempts++;

  StartTransfer(call, pool, ep, &Impl::OnAttemptDone);
}

void LlmClient::Impl::StartTransfer(Call* call, const Pool& pool, const Endpoint& ep,
                                    void (Impl::*done)(Call*, CURLcode, long)) {
  CURL* e = PrepareEasy(call, pool, ep);
  if (e == nullptr) {
    (this->*done)(call, CURLE_OUT_OF_MEMORY, 0);
    return;
  }
  call->easy = e;
  CURLMcode mc = curl_multi_add_handle(multi_, e);
  if (mc != CURLM_OK) {
    call->easy = nullptr;
    ReleaseEasy(e);
    std::snprintf(call->errbuf, sizeof(call->errbuf), "cannot start transfer: %s",
                  curl_multi_strerror(mc));
    (this->*done)(call, CURLE_FAILED_INIT, 0);
  }
}

CURL* LlmClient::Impl::PrepareEasy(Call* call, const Pool& pool, const Endpoint& ep) {
  call->response.clear();
  call->response_too_large = false;
  call->retry_after.clear();
  call->errbuf[0] = '\0';
  CURL* e = TakeEasy();
  if (e == nullptr) return nullptr;
  curl_easy_setopt(e, CURLOPT_URL, ep.completions_url.c_str());
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->payload.data());
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(call->payload.size()));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, pool.headers);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "matrix-llm/0.1");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
  curl_easy_setopt(e, CURLOPT_PRIVATE, call);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  // The hard limit; SweepPatience() gives up sooner on a user request the
  // server seems to have forgotten.
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(std::ceil(pool.cfg.timeout_s * 1000)));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::ceil(pool.cfg.connect_timeout_s * 1000)));
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  return e;
}

void LlmClient::Impl::ReapFinished() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* e = msg->easy_handle;
    CURLcode code = msg->data.result;
    Call* call = nullptr;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, &call);
    long http = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &http);
    curl_multi_remove_handle(multi_, e);
    ReleaseEasy(e);
    if (call == nullptr) continue;
    call->easy = nullptr;
    if (call->health_probe) {
      OnProbeDone(call, code, http);
    } else {
      OnAttemptDone(call, code, http);
    }
  }
}

void LlmClient::Impl::OnAttemptDone(Call* call, CURLcode code, long http_long) {
  Pool& pool = *call->pool;
  Endpoint& ep = *pool.endpoints[call->endpoint];
  const int64_t now = clock_->NowNanos();
  const int http = static_cast<int>(http_long);

  enum class Next { kDone, kRetry, kFail };
  Next next = Next::kRetry;
  AttemptHealth health = AttemptHealth::kFailure;
  bool timed_out = false;
  bool unreachable = false;  // nothing listens there: the endpoint is down, not the request at fault
  bool overload = false;   // the endpoint says it is over capacity: 429, 503, timeout
  std::string error;       // what went wrong, for the status message
  std::string error_body;  // the server's text, for the result
  std::optional<double> retry_after;
  ParsedCompletion parsed;
  if (!pool.cfg.api_key.empty() && call->response.find(pool.cfg.api_key) != std::string::npos)
    call->response =
        Redact(pool, call->response);  // a server echoing the key never gets it into records

  if (code != CURLE_OK) {
    std::string what = call->errbuf[0] ? call->errbuf : curl_easy_strerror(code);
    if (call->response_too_large) {
      next = Next::kFail;
      health = AttemptHealth::kSuccess;
      error = "response larger than " + std::to_string(kMaxResponseBytes) + " bytes";
    } else if (code == CURLE_OPERATION_TIMEDOUT) {
      timed_out = true;
      overload = true;
      error = "timed out: " + what;
    } else if (code == CURLE_UNSUPPORTED_PROTOCOL || code == CURLE_URL_MALFORMAT) {
      next = Next::kFail;
      health = AttemptHealth::kNeutral;
      error = "cannot send request: " + what;
    } else {
      error = "transport error: " + what;
      unreachable = code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
                    code == CURLE_COULDNT_RESOLVE_PROXY;
    }
  } else {
    switch (ClassifyHttpStatus(http)) {
      case HttpOutcome::kSuccess: {
        StatusOr<ParsedCompletion> p = ParseChatCompletion(call->response);
        if (p.ok()) {
          next = Next::kDone;
          health = AttemptHealth::kSuccess;
          parsed = std::move(p).value();
        } else {
          error =
              "HTTP " + std::to_string(http) + " with a malformed body: " + p.status().message();
          error_body = TruncateText(call->response, kMaxErrorText);
        }
        break;
      }
      case HttpOutcome::kRetryable:
        health = http == 429 ? AttemptHealth::kNeutral : AttemptHealth::kFailure;
        overload = http == 429 || http == 503;
        if (HonoursRetryAfter(http) && !call->retry_after.empty())
          retry_after = ParseRetryAfter(call->retry_after, clock_->WallMicros() / 1e6);
        error = "HTTP " + std::to_string(http) + ": " +
                ErrorMessageFromBody(call->response, kMaxErrorText);
        error_body = TruncateText(call->response, kMaxErrorText);
        break;
      case HttpOutcome::kNonRetryable:
        next = Next::kFail;
        health = AttemptHealth::kSuccess;  // the endpoint is up; the request is at fault
        error = "HTTP " + std::to_string(http) + ": " +
                ErrorMessageFromBody(call->response, kMaxErrorText);
        error_body = TruncateText(call->response, kMaxErrorText);
        break;
    }
  }
  call->response.clear();
  call->response.shrink_to_fit();

  BreakerChange change = pool.balancer->OnFinish(call->endpoint, health, now);
  ep.in_flight.fetch_sub(1);
  Publish(pool, call->endpoint);
  AdaptLimit(call, next == Next::kDone, overload, now);
  if (change == BreakerChange::kOpened) {
    LOG_WARN << "llm pool '" << pool.cfg.name << "': endpoint " << ep.display
             << " marked unhealthy after " << pool.balancer->consecutive_failures(call->endpoint)
             << " consecutive failures; last: " << Redact(pool, error) << "; health probe in "
             << FormatSeconds(pool.cfg.breaker_cooldown_s) << " s";
  } else if (change == BreakerChange::kClosed) {
    LOG_WARN << "llm pool '" << pool.cfg.name << "': endpoint " << ep.display
             << " is healthy again";
  }

  if (next == Next::kDone) {
    CompleteCall(call, Status::Ok(), &parsed, http);
    return;
  }
  ep.errors.fetch_add(1);
  call->last_http = http;
  call->last_timed_out = timed_out;
  call->last_error = Redact(pool, ep.display + ": " + error);
  call->last_error_body = Redact(pool, error_body);

  if (next == Next::kFail) {
    LOG_DEBUG << "llm pool '" << pool.cfg.name << "' request " << call->tag
              << " failed: " << call->last_error;
    CompleteCall(call, InvalidArgument("llm pool '" + pool.cfg.name + "' " + call->last_error),
                 nullptr, http);
    return;
  }
  if (unreachable) {
    // An outage costs the request no retries, but it waits at most outage_s.
    ++call->unreachable_attempts;
    if (call->unreachable_since_ns < 0) call->unreachable_since_ns = now;
    if (now - call->unreachable_since_ns > static_cast<int64_t>(OutageSeconds(pool) * 1e9)) {
      std::string msg = "llm pool '" + pool.cfg.name + "': no endpoint reachable for " +
                        FormatSeconds(OutageSeconds(pool)) + " s; last: " + call->last_error;
      call->outage = true;
      CompleteCall(call, Unavailable(msg), nullptr, http);
      return;
    }
  } else {
    call->unreachable_since_ns = -1;
  }
  if (call->attempts - call->unreachable_attempts > pool.cfg.max_retries) {
    std::string msg = "llm pool '" + pool.cfg.name + "': gave up after " +
                      std::to_string(call->attempts) + " attempts; last: " + call->last_error;
    LOG_DEBUG << msg;
    CompleteCall(call, timed_out ? DeadlineExceeded(msg) : Unavailable(msg), nullptr, http);
    return;
  }
  double delay_s = RetryDelaySeconds(call->attempts, pool.cfg.backoff_base_s,
                                     pool.cfg.backoff_max_s, retry_after, unit_(rng_));
  LOG_DEBUG << "llm pool '" << pool.cfg.name << "' request " << call->tag << " attempt "
            << call->attempts << " failed (" << call->last_error << "); retrying in " << delay_s
            << " s";
  timers_.push(Timer{now + static_cast<int64_t>(delay_s * 1e9), timer_seq_++, call});
}

void LlmClient::Impl::OnProbeDone(Call* call, CURLcode code, long http_long) {
  Pool& pool = *call->pool;
  const int i = call->endpoint;
  Endpoint& ep = *pool.endpoints[i];
  const int64_t now = clock_->NowNanos();
  const int http = static_cast<int>(http_long);
  bool ok = false;
  std::string error;
  if (code != CURLE_OK) {
    std::string what = call->errbuf[0] ? call->errbuf : curl_easy_strerror(code);
    error = (code == CURLE_OPERATION_TIMEDOUT ? "timed out: " : "transport error: ") + what;
  } else if (ClassifyHttpStatus(http) == HttpOutcome::kSuccess) {
    StatusOr<ParsedCompletion> p = ParseChatCompletion(call->response);
    ok = p.ok();
    if (!ok)
      error = "HTTP " + std::to_string(http) + " with a malformed body: " + p.status().message();
  } else {
    error =
        "HTTP " + std::to_string(http) + ": " + ErrorMessageFromBody(call->response, kMaxErrorText);
  }
  const bool was_admitted = pool.balancer->admitted(i);
  BreakerChange change = pool.balancer->OnProbeFinish(i, ok, now);
  if (!ok) ep.probes_failed.fetch_add(1);
  Publish(pool, i);
  const std::string where = "llm pool '" + pool.cfg.name + "': endpoint " + ep.display;
  if (change == BreakerChange::kClosed) {
    if (was_admitted) {
      LOG_WARN << where << " is healthy again (health probe succeeded)";
    } else {
      LOG_INFO << where << " passed its health probe; it takes requests now";
    }
  } else if (!ok) {
    std::string msg =
        where + " failed its health probe: " + Redact(pool, error) +
        (pool.balancer->active(i)
             ? "; next probe in " + FormatSeconds(std::max(pool.cfg.breaker_cooldown_s, 0.1)) + " s"
             : "");
    // The first failure of a new endpoint is worth a warning; the rest repeat it.
    if (!was_admitted && ep.probes_failed.load() == 1) {
      LOG_WARN << msg;
    } else {
      LOG_DEBUG << msg;
    }
  }
  probes_.erase(call);
  RefreshServing(pool, now);
}

void LlmClient::Impl::AdaptLimit(Call* call, bool success, bool overload, int64_t now_ns) {
  if (!success && !overload) return;
  Pool& pool = *call->pool;
  const int i = call->endpoint;
  ConcurrencyLimiter& limiter = pool.limiters[i];
  const double before = limiter.limit();
  const bool decreased = success ? limiter.OnSuccess(call->attempt_start_ns, now_ns)
                                 : limiter.OnOverload(call->attempt_start_ns, now_ns);
  pool.balancer->set_cap(i, limiter.cap());
  pool.endpoints[i]->concurrency_limit.store(limiter.limit());
  if (decreased) {
    LOG_DEBUG << "llm pool '" << pool.cfg.name << "': endpoint " << pool.endpoints[i]->display
              << " concurrency limit " << before << " -> " << limiter.limit() << " ("
              << (success ? "mean latency above target" : "overloaded") << ")";
  }
}

void LlmClient::Impl::CompleteCall(Call* call, Status status, ParsedCompletion* parsed, int http) {
  ChatResult r;
  r.tag = call->tag;
  r.status = std::move(status);
  r.http_status = http;
  r.attempts = call->attempts;
  r.outage = call->outage;
  r.latency_ns = clock_->NowNanos() - call->submit_ns;
  if (call->endpoint >= 0) r.endpoint = call->pool->endpoints[call->endpoint]->display;
  if (parsed != nullptr) {
    r.content = std::move(parsed->content);
    r.tool_calls = std::move(parsed->tool_calls);
    r.finish_reason = std::move(parsed->finish_reason);
    r.prompt_tokens = parsed->prompt_tokens;
    r.completion_tokens = parsed->completion_tokens;
    r.raw = std::move(parsed->raw);
  } else {
    r.error_body = std::move(call->last_error_body);
  }
  live_.erase(call);
  PushResult(std::move(r));
}

void LlmClient::Impl::CancelEverything() {
  std::vector<Call*> calls;
  calls.reserve(live_.size());
  for (auto& [raw, owned] : live_) calls.push_back(raw);
  for (Call* call : calls) {
    if (call->easy != nullptr) {
      curl_multi_remove_handle(multi_, call->easy);
      ReleaseEasy(call->easy);
      call->easy = nullptr;
      Pool& pool = *call->pool;
      pool.balancer->OnFinish(call->endpoint, AttemptHealth::kNeutral, clock_->NowNanos());
      pool.endpoints[call->endpoint]->in_flight.fetch_sub(1);
    }
    call->last_error_body.clear();
    CompleteCall(call, Cancelled("llm client shut down before the request completed"), nullptr,
                 call->last_http);
  }
  for (auto& pool : pools_) pool->waiting.clear();
  while (!timers_.empty()) timers_.pop();
  for (auto& [raw, owned] : probes_) {
    if (raw->easy != nullptr) {
      curl_multi_remove_handle(multi_, raw->easy);
      ReleaseEasy(raw->easy);
      raw->easy = nullptr;
    }
  }
  probes_.clear();
}

// ---------------------------------------------------------------------------
// LlmClient forwarding.

LlmClient::LlmClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlmClient::~LlmClient() = default;

StatusOr<std::unique_ptr<LlmClient>> LlmClient::Create(std::vector<PoolConfig> pools,
                                                       const Clock* clock, EventLoop* loop) {
  auto impl = std::make_unique<Impl>(clock, loop);
  Status st = impl->Init(std::move(pools));
  if (!st.ok()) return st;
  return std::unique_ptr<LlmClient>(new LlmClient(std::move(impl)));
}

void LlmClient::Submit(ChatRequest req) { impl_->Submit(std::move(req)); }
Status LlmClient::SetEndpoints(const std::string& pool, std::vector<std::string> base_urls) {
  return impl_->SetEndpoints(pool, std::move(base_urls));
}
size_t LlmClient::Drain(std::vector<ChatResult>* out) { return impl_->Drain(out); }
int LlmClient::notify_fd() const { return impl_->notify_fd(); }
int LlmClient::Pump() { return impl_->Pump(); }
void LlmClient::Shutdown() { impl_->Shutdown(); }
std::vector<LlmClient::EndpointStats> LlmClient::Stats() const { return impl_->Stats(); }

}  // namespace matrix::llm
