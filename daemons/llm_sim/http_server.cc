// HttpServer implementation: Boost.Asio accept loop, Boost.Beast request
// parsing, hand-written HTTP/1.1 responses (JSON, or chunked SSE for streams).
//
// Threading: Impl's engine state (engine_, seqs_, timer fields) is touched only
// on engine_strand_. Each Session's fields are touched only on its socket's
// strand. Cross-strand calls are posts: Session -> Impl::Submit/Cancel ->
// engine strand; engine -> Session::OnProgress -> session strand. stats_ and
// faults_ are thread-safe.
//
// A session reads continuously, also while a request is being answered, so a
// client that disconnects (for example after its own timeout) is noticed at
// once and its sequence leaves the engine, as vLLM aborts such requests.
#include "daemons/llm_sim/http_server.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "common/base/log.h"
#include "common/metrics/metrics.h"
#include "common/metrics/sim_metrics.h"
#include "daemons/llm_sim/sim_content.h"
#include "daemons/llm_sim/sim_engine.h"
#include "daemons/llm_sim/sim_faults.h"

namespace matrix::llm_sim {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using Strand = net::strand<net::io_context::executor_type>;

constexpr size_t kReadChunk = 4096;
constexpr size_t kMaxBufferedWhileBusy = 64 * 1024;
constexpr uint64_t kBodyLimit = 32ull << 20;

std::string HostString(const net::ip::address& a) {
  return a.is_v6() ? "[" + a.to_string() + "]" : a.to_string();
}

std::string ResponseHead(int status, std::string_view content_type, int64_t content_length,
                         bool keep_alive, std::string_view extra_headers) {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " ";
  head += std::string(http::obsolete_reason(http::int_to_status(static_cast<unsigned>(status))));
  head += "\r\nServer: matrix-llm-sim\r\nContent-Type: ";
  head += content_type;
  if (content_length >= 0) {
    head += "\r\nContent-Length: " + std::to_string(content_length);
  } else {
    head += "\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache";
  }
  head += keep_alive ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n";
  head += extra_headers;
  head += "\r\n";
  return head;
}

std::string FormatSeconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", s);
  return buf;
}

}  // namespace

class Session;

class HttpServer::Impl {
 public:
  Impl(const SimConfig& config, const Clock* clock)
      : config_(config),
        clock_(clock),
        faults_(config),
        engine_(config, clock),
        ioc_(std::make_unique<net::io_context>(config.threads)) {
    engine_strand_.emplace(net::make_strand(*ioc_));
    acceptor_.emplace(*ioc_);
    accept_retry_.emplace(*ioc_);
    engine_timer_.emplace(*engine_strand_);
    signals_.emplace(*ioc_, SIGTERM, SIGINT);
    metrics::RegisterProcessMetrics(metrics_registry_, *clock);
    for (int k = 0; k < kFaultKindCount; ++k)
      fault_counters_[static_cast<size_t>(k)] = metrics_.Fault(FaultKindName(static_cast<FaultKind>(k)));
    engine_.set_step_observer([this](int64_t batch, int64_t nanos) {
      metrics_.batch_size.Observe(static_cast<double>(batch));
      metrics_.step_duration_seconds.Observe(static_cast<double>(nanos) / 1e9);
    });
  }

  ~Impl() {
    // Sessions reference this object: destroy every pending handler (and so
    // every session) while the rest of Impl is still alive.
    seqs_.clear();
    signals_.reset();
    engine_timer_.reset();
    accept_retry_.reset();
    acceptor_.reset();
    engine_strand_.reset();
    ioc_.reset();
  }

  Status Listen();
  Status PublishAddress() const;
  void Run();
  void Stop() { ioc_->stop(); }

  // Any strand.
  void Submit(std::shared_ptr<Session> session, const SeqSpec& spec);
  void Cancel(int64_t id);
  int64_t NextSeqId() { return next_seq_id_.fetch_add(1, std::memory_order_relaxed); }

  // Any strand: counts into SimStats and the metrics.
  void CountFault(FaultKind kind) {
    stats_.CountFault(kind);
    fault_counters_[static_cast<size_t>(kind)].Inc();
  }
  void CountResponse(Endpoint endpoint, int status) {
    if (status < 100 || status >= 600) return;
    std::lock_guard<std::mutex> lock(responses_mu_);
    metrics::Counter& c = responses_[static_cast<size_t>(endpoint)][static_cast<size_t>(status)];
    if (!c.valid()) c = metrics_.Request(EndpointName(endpoint), status);
    c.Inc();
  }

  const SimConfig config_;
  const Clock* const clock_;
  SimStats stats_;
  FaultInjector faults_;
  std::string address_;
  // Metrics: the registry precedes every handle into it; the server, declared
  // last of them, stops first.
  metrics::MetricsRegistry metrics_registry_;
  metrics::SimMetrics metrics_{metrics_registry_};
  std::array<metrics::Counter, kFaultKindCount> fault_counters_;  // set in the constructor
  std::mutex responses_mu_;
  // By endpoint and status code, resolved on first use. GUARDED_BY(responses_mu_)
  std::array<std::array<metrics::Counter, 600>, kEndpointCount> responses_;
  int64_t tokens_counted_ = 0;  // engine strand: engine tokens already in the metrics
  std::unique_ptr<metrics::MetricsServer> metrics_server_;

 private:
  void StartAccept();
  void OnAccept(error_code ec, tcp::socket socket);
  // Engine strand only: advances the engine to now, applies `change`,
  // delivers progress to sessions and re-arms the engine timer.
  template <typename Change>
  void RunEngine(Change&& change);
  void ArmTimer();

  SimEngine engine_;  // engine strand
  std::unique_ptr<net::io_context> ioc_;
  std::optional<Strand> engine_strand_;
  std::optional<tcp::acceptor> acceptor_;
  std::optional<net::steady_timer> accept_retry_;
  std::optional<net::steady_timer> engine_timer_;  // engine strand
  std::optional<net::signal_set> signals_;
  // Engine strand: sequences in the engine and the sessions waiting on them.
  std::unordered_map<int64_t, std::shared_ptr<Session>> seqs_;
  std::vector<SeqEvent> events_;  // engine strand scratch
  bool timer_armed_ = false;      // engine strand
  int64_t timer_deadline_ = 0;    // engine strand
  std::atomic<int64_t> next_seq_id_{1};
  int64_t last_accept_error_log_ = 0;
};

// One client connection. Lifecycle: created on accept, reads requests one at a
// time (pipelined requests wait in the input buffer), answers each, and dies
// when the peer leaves, on a protocol error, after "Connection: close", or when
// the server is destroyed. Kept alive by its pending I/O handlers and, while a
// completion is in the engine, by Impl::seqs_.
// Invariants: at most one read and one write in flight; busy_ from the moment
// a request is complete until its response is fully written; active_ set only
// while a completion is being generated.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl* server)
      : socket_(std::move(socket)), server_(server) {
    ResetParser();
  }
  ~Session() { server_->stats_.connections_open.fetch_sub(1, std::memory_order_relaxed); }

  void Start() {
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] { self->ReadMore(); });
  }
  net::any_io_executor executor() { return socket_.get_executor(); }

  // Session strand: the engine reports `tokens` generated so far.
  void OnProgress(int64_t tokens, bool done);

 private:
  struct Active {
    CompletionRequest request;
    CompletionPlan plan;
    ResponseMeta meta;
    std::unique_ptr<StreamRenderer> stream;  // streaming and not malformed
    int64_t sent = 0;
    int64_t seq_id = 0;
    bool malformed = false;
    int malformed_variant = 0;
  };

  void ResetParser() {
    parser_.emplace();
    parser_->body_limit(kBodyLimit);
    parser_->eager(true);
    continue_sent_ = false;
  }
  void ReadMore();
  void OnRead(error_code ec, size_t n);
  void TryParse();
  void MaybeSendContinue();
  void Handle(http::request<http::string_body>&& req);
  void HandleCompletion(ApiKind kind, const std::string& body);
  void SendResponse(int status, std::string_view content_type, const std::string& body,
                    std::string_view extra_headers = {});
  void SendError(int status, const std::string& type, const std::string& message,
                 std::string_view extra_headers = {});
  void Write(std::string_view data, bool last);
  void WriteChunk(std::string_view data, bool last);
  void Flush();
  void OnWrite(error_code ec);
  void FinishResponse();
  void Close();

  tcp::socket socket_;
  HttpServer::Impl* const server_;
  beast::flat_buffer in_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool continue_sent_ = false;
  bool read_in_flight_ = false;
  bool write_in_flight_ = false;
  bool closed_ = false;
  bool busy_ = false;
  bool hanging_ = false;
  bool keep_alive_ = true;
  bool response_complete_ = false;
  std::string pending_;
  std::string writing_;
  std::unique_ptr<Active> active_;
  Endpoint endpoint_ = Endpoint::kOther;  // of the request being answered
};

// ---------------------------------------------------------------- Session

void Session::ReadMore() {
  if (read_in_flight_ || closed_) return;
  if (busy_ && in_.size() >= kMaxBufferedWhileBusy) return;
  read_in_flight_ = true;
  socket_.async_read_some(in_.prepare(kReadChunk),
                          [self = shared_from_this()](error_code ec, size_t n) { self->OnRead(ec, n); });
}

void Session::OnRead(error_code ec, size_t n) {
  read_in_flight_ = false;
  if (closed_) return;
  if (ec) {
    if (hanging_) {
      LOG_DEBUG << "client left a hanging request";
    }
    Close();
    return;
  }
  in_.commit(n);
  TryParse();
  ReadMore();
}

void Session::TryParse() {
  while (!busy_ && !closed_ && in_.size() > 0) {
    error_code ec;
    size_t used = parser_->put(in_.data(), ec);
    in_.consume(used);
    if (ec == http::error::need_more) break;
    if (ec) {
      busy_ = true;
      keep_alive_ = false;
      server_->stats_.CountRequest(Endpoint::kOther);
      endpoint_ = Endpoint::kOther;
      const bool too_large = ec == http::error::body_limit;
      SendError(too_large ? 413 : 400, "invalid_request_error",
                "malformed HTTP request: " + ec.message());
      return;
    }
    if (parser_->is_done()) {
      http::request<http::string_body> req = parser_->release();
      ResetParser();
      busy_ = true;
      Handle(std::move(req));
    } else if (used == 0) {
      break;
    }
  }
  if (!busy_ && !closed_) MaybeSendContinue();
}

void Session::MaybeSendContinue() {
  if (continue_sent_ || !parser_->is_header_done() || parser_->is_done()) return;
  const auto& header = parser_->get();
  auto it = header.find(http::field::expect);
  if (it != header.end() && beast::iequals(it->value(), "100-continue")) {
    continue_sent_ = true;
    Write("HTTP/1.1 100 Continue\r\n\r\n", /*last=*/false);
  }
}

void Session::Handle(http::request<http::string_body>&& req) {
  keep_alive_ = req.keep_alive();
  std::string_view target(req.target().data(), req.target().size());
  if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  const http::verb method = req.method();
  SimStats& stats = server_->stats_;

  struct Route {
    std::string_view path;
    Endpoint endpoint;
    http::verb method;
  };
  static const Route kRoutes[] = {
      {"/v1/chat/completions", Endpoint::kChatCompletions, http::verb::post},
      {"/v1/completions", Endpoint::kCompletions, http::verb::post},
      {"/v1/models", Endpoint::kModels, http::verb::get},
      {"/health", Endpoint::kHealth, http::verb::get},
      {"/stats", Endpoint::kStats, http::verb::get},
  };
  const Route* route = nullptr;
  for (const Route& r : kRoutes)
    if (r.path == target) route = &r;
  endpoint_ = route ? route->endpoint : Endpoint::kOther;
  if (!route) {
    stats.CountRequest(Endpoint::kOther);
    SendError(404, "not_found_error", "Not Found: " + std::string(target));
    return;
  }
  stats.CountRequest(route->endpoint);
  if (method != route->method) {
    std::string allow = std::string("Allow: ") +
                        (route->method == http::verb::post ? "POST" : "GET") + "\r\n";
    SendError(405, "invalid_request_error", "Method Not Allowed", allow);
    return;
  }
  const int64_t now_s = server_->clock_->WallMicros() / 1'000'000;
  switch (route->endpoint) {
    case Endpoint::kChatCompletions:
      HandleCompletion(ApiKind::kChat, req.body());
      return;
    case Endpoint::kCompletions:
      HandleCompletion(ApiKind::kText, req.body());
      return;
    case Endpoint::kModels:
      SendResponse(200, "application/json", RenderModels(server_->config_, now_s));
      return;
    case Endpoint::kHealth:
      SendResponse(200, "text/plain", "ok");
      return;
    case Endpoint::kStats:
      SendResponse(200, "application/json", stats.ToJson());
      return;
    case Endpoint::kOther:
      break;
  }
  SendError(404, "not_found_error", "Not Found");
}

void Session::HandleCompletion(ApiKind kind, const std::string& body) {
  const SimConfig& config = server_->config_;
  SimStats& stats = server_->stats_;
  const FaultDecision fault = server_->faults_.Decide();
  // A client's retry repeats the body: the gap after a 429 is measured.
  const uint64_t body_hash = Hash64(body);
  const int64_t now_us = server_->clock_->WallMicros();
  stats.OnRequestBody(body_hash, now_us);
  if (fault.drop) {
    server_->CountFault(FaultKind::kDrop);
    LOG_DEBUG << "fault: dropping connection";
    Close();
    return;
  }
  if (fault.hang) {
    server_->CountFault(FaultKind::kHang);
    hanging_ = true;  // busy_ stays set; the read loop notices when the client leaves
    return;
  }
  if (fault.http_status == 429) {
    server_->CountFault(FaultKind::kHttp429);
    stats.OnRateLimited(body_hash, now_us, config.retry_after_s);
    SendError(429, "rate_limit_error",
              "Rate limit reached (simulated); retry after " + FormatSeconds(config.retry_after_s) +
                  " s",
              "Retry-After: " + FormatSeconds(config.retry_after_s) + "\r\n");
    return;
  }
  if (fault.http_status == 500) {
    server_->CountFault(FaultKind::kHttp500);
    SendError(500, "server_error", "Internal server error (simulated)");
    return;
  }
  if (fault.http_status == 503) {
    server_->CountFault(FaultKind::kHttp503);
    SendError(503, "server_error", "Service unavailable (simulated): the engine is overloaded");
    return;
  }

  StatusOr<CompletionRequest> parsed = ParseCompletionRequest(kind, body, config);
  if (!parsed.ok()) {
    SendError(400, "invalid_request_error", parsed.status().message());
    return;
  }
  auto active = std::make_unique<Active>();
  active->request = std::move(parsed).value();
  active->plan = PlanCompletion(active->request, config);
  active->seq_id = server_->NextSeqId();
  active->meta.id = ResponseIdPrefix(kind) +
                    Hex64(Hash64(std::to_string(active->seq_id), active->request.seed)) +
                    Hex64(static_cast<uint64_t>(active->seq_id)).substr(8);
  active->meta.created = server_->clock_->WallMicros() / 1'000'000;
  stats.tokens_in.fetch_add(static_cast<uint64_t>(active->request.prompt_tokens),
                            std::memory_order_relaxed);
  int64_t delay_nanos = 0;
  if (fault.malformed) {
    server_->CountFault(FaultKind::kMalformed);
    active->malformed = true;
    active->malformed_variant = fault.malformed_variant;
  }
  if (fault.spike) {
    server_->CountFault(FaultKind::kSpike);
    delay_nanos = static_cast<int64_t>(config.spike_ms * 1e6 / config.speed);
  }
  if (active->request.stream) {
    Write(ResponseHead(200, "text/event-stream", -1, keep_alive_, {}), /*last=*/false);
    if (!active->malformed)
      active->stream =
          std::make_unique<StreamRenderer>(&active->request, &active->plan, active->meta);
  }
  SeqSpec spec;
  spec.id = active->seq_id;
  spec.prompt_tokens = active->request.prompt_tokens;
  spec.output_tokens = active->plan.completion_tokens();
  spec.stream = active->stream != nullptr;
  spec.extra_delay_nanos = delay_nanos;
  active_ = std::move(active);
  server_->Submit(shared_from_this(), spec);
}

void Session::OnProgress(int64_t tokens, bool done) {
  if (closed_ || !active_) return;
  Active& a = *active_;
  std::string out;
  if (a.stream) {
    out = a.stream->Tokens(a.sent, tokens);
    a.sent = tokens;
    if (done) out += a.stream->Finish();
  } else if (done) {
    out = a.malformed ? RenderMalformed(a.request, a.plan, a.meta, a.malformed_variant)
                      : RenderCompletion(a.request, a.plan, a.meta);
  }
  if (!done) {
    WriteChunk(out, /*last=*/false);
    return;
  }
  SimStats& stats = server_->stats_;
  stats.tokens_out.fetch_add(static_cast<uint64_t>(a.plan.completion_tokens()),
                             std::memory_order_relaxed);
  stats.completions_finished.fetch_add(1, std::memory_order_relaxed);
  const bool chunked = a.request.stream;
  active_.reset();
  if (chunked) {
    stats.CountResponse(200);
    server_->CountResponse(endpoint_, 200);
    WriteChunk(out, /*last=*/true);
  } else {
    SendResponse(200, "application/json", out);
  }
}

void Session::SendResponse(int status, std::string_view content_type, const std::string& body,
                           std::string_view extra_headers) {
  server_->stats_.CountResponse(status);
  server_->CountResponse(endpoint_, status);
  std::string data = ResponseHead(status, content_type, static_cast<int64_t>(body.size()),
                                  keep_alive_, extra_headers);
  data += body;
  Write(data, /*last=*/true);
}

void Session::SendError(int status, const std::string& type, const std::string& message,
                        std::string_view extra_headers) {
  SendResponse(status, "application/json", RenderError(status, type, message), extra_headers);
}

void Session::Write(std::string_view data, bool last) {
  if (closed_) return;
  pending_.append(data.data(), data.size());
  if (last) response_complete_ = true;
  Flush();
}

void Session::WriteChunk(std::string_view data, bool last) {
  std::string framed;
  if (!data.empty()) {
    char size[24];
    std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
    framed = size;
    framed.append(data.data(), data.size());
    framed += "\r\n";
  }
  if (last) framed += "0\r\n\r\n";
  if (!framed.empty() || last) Write(framed, last);
}

void Session::Flush() {
  if (write_in_flight_ || closed_) return;
  if (pending_.empty()) {
    if (response_complete_) FinishResponse();
    return;
  }
  writing_.swap(pending_);
  pending_.clear();
  write_in_flight_ = true;
  net::async_write(socket_, net::buffer(writing_),
                   [self = shared_from_this()](error_code ec, size_t) { self->OnWrite(ec); });
}

void Session::OnWrite(error_code ec) {
  write_in_flight_ = false;
  if (closed_) return;
  if (ec) {
    Close();
    return;
  }
  writing_.clear();
  Flush();
}

void Session::FinishResponse() {
  response_complete_ = false;
  busy_ = false;
  hanging_ = false;
  if (writing_.capacity() > 64 * 1024) std::string().swap(writing_);
  if (!keep_alive_) {
    Close();
    return;
  }
  TryParse();
  ReadMore();
}

void Session::Close() {
  if (closed_) return;
  closed_ = true;
  if (active_) {
    server_->Cancel(active_->seq_id);
    server_->stats_.completions_cancelled.fetch_add(1, std::memory_order_relaxed);
    active_.reset();
  }
  error_code ec;
  socket_.shutdown(tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

// ---------------------------------------------------------------- Impl

Status HttpServer::Impl::Listen() {
  const std::string& listen = config_.listen;
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return InvalidArgument("--listen must be host:port: " + listen);
  std::string host = listen.substr(0, colon);
  std::string port_text = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  char* end = nullptr;
  long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port < 0 || port > 65535)
    return InvalidArgument("bad port in --listen " + listen);

  error_code ec;
  net::ip::address addr;
  if (host.empty() || host == "*") {
    addr = net::ip::address_v4::any();
  } else {
    addr = net::ip::make_address(host, ec);
    if (ec) {
      tcp::resolver resolver(*ioc_);
      auto results = resolver.resolve(host, port_text, ec);
      if (ec || results.empty())
        return InvalidArgument("cannot resolve host '" + host + "': " + ec.message());
      addr = results.begin()->endpoint().address();
    }
  }
  tcp::endpoint endpoint(addr, static_cast<unsigned short>(port));
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(65535, ec);
  if (ec) return Unavailable("cannot listen on " + listen + ": " + ec.message());
  tcp::endpoint local = acceptor_->local_endpoint(ec);
  if (ec) return Unavailable("cannot read bound address: " + ec.message());
  address_ = HostString(local.address()) + ":" + std::to_string(local.port());
  if (!config_.metrics.empty()) {
    MATRIX_ASSIGN_OR_RETURN(metrics_server_,
                            metrics::MetricsServer::Create(metrics_registry_, config_.metrics));
  }
  return Status::Ok();
}

Status HttpServer::Impl::PublishAddress() const {
  // Metrics first: once the endpoint file exists, both are up.
  if (metrics_server_ && !config_.run_dir.empty())
    MATRIX_RETURN_IF_ERROR(metrics_server_->PublishEndpoint(config_.run_dir, config_.name));
  if (!config_.port_file.empty())
    MATRIX_RETURN_IF_ERROR(WriteFileAtomic(config_.port_file, address_));
  if (!config_.run_dir.empty()) {
    std::string advertised = address_;
    size_t colon = address_.rfind(':');
    std::string host = address_.substr(0, colon);
    if (host == "0.0.0.0" || host == "[::]") {
      char name[256] = {0};
      if (gethostname(name, sizeof(name) - 1) == 0 && name[0])
        advertised = std::string(name) + address_.substr(colon);
    }
    MATRIX_RETURN_IF_ERROR(
        WriteEndpointFile(config_.run_dir, config_.name, "http://" + advertised + "/v1"));
  }
  return Status::Ok();
}

void HttpServer::Impl::Run() {
  ::signal(SIGPIPE, SIG_IGN);
  signals_->async_wait([this](error_code ec, int signo) {
    if (ec) return;
    LOG_INFO << "signal " << signo << ": stopping";
    Stop();
  });
  StartAccept();
  std::vector<std::thread> threads;
  for (int i = 1; i < config_.threads; ++i) threads.emplace_back([this] { ioc_->run(); });
  ioc_->run();
  for (auto& t : threads) t.join();
  error_code ignored;
  acceptor_->close(ignored);  // new connections are refused from here on
}

void HttpServer::Impl::StartAccept() {
  acceptor_->async_accept(net::make_strand(*ioc_), [this](error_code ec, tcp::socket socket) {
    OnAccept(ec, std::move(socket));
  });
}

void HttpServer::Impl::OnAccept(error_code ec, tcp::socket socket) {
  if (ec) {
    if (ec == net::error::operation_aborted || !acceptor_->is_open()) return;
    // Out of descriptors or a transient network error: retry shortly, log at most once a second.
    int64_t now = clock_->NowMillis();
    if (now - last_accept_error_log_ >= 1000) {
      last_accept_error_log_ = now;
      LOG_WARN << "accept failed: " << ec.message();
    }
    accept_retry_->expires_after(std::chrono::milliseconds(20));
    accept_retry_->async_wait([this](error_code wait_ec) {
      if (!wait_ec) StartAccept();
    });
    return;
  }
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  stats_.connections_total.fetch_add(1, std::memory_order_relaxed);
  stats_.connections_open.fetch_add(1, std::memory_order_relaxed);
  std::make_shared<Session>(std::move(socket), this)->Start();
  StartAccept();
}

void HttpServer::Impl::Submit(std::shared_ptr<Session> session, const SeqSpec& spec) {
  net::post(*engine_strand_, [this, session = std::move(session), spec]() mutable {
    RunEngine([&] {
      engine_.Submit(spec);
      seqs_.emplace(spec.id, std::move(session));
    });
  });
}

void HttpServer::Impl::Cancel(int64_t id) {
  net::post(*engine_strand_, [this, id] {
    if (seqs_.erase(id) == 0) return;
    RunEngine([&] { engine_.Cancel(id); });
  });
}

template <typename Change>
void HttpServer::Impl::RunEngine(Change&& change) {
  events_.clear();
  engine_.Advance(&events_);
  change();
  for (const SeqEvent& ev : events_) {
    auto it = seqs_.find(ev.id);
    if (it == seqs_.end()) continue;
    std::shared_ptr<Session> session = it->second;
    if (ev.done) seqs_.erase(it);
    net::any_io_executor ex = session->executor();
    net::post(ex, [session = std::move(session), ev] { session->OnProgress(ev.tokens, ev.done); });
  }
  stats_.active_sequences.store(engine_.running(), std::memory_order_relaxed);
  stats_.queued.store(engine_.waiting(), std::memory_order_relaxed);
  stats_.engine_steps.store(static_cast<uint64_t>(engine_.counters().steps),
                            std::memory_order_relaxed);
  metrics_.active_sequences.Set(engine_.running());
  metrics_.queued_sequences.Set(engine_.waiting());
  const int64_t tokens = engine_.counters().tokens_generated;
  if (tokens > tokens_counted_) metrics_.generated_tokens.Inc(static_cast<double>(tokens - tokens_counted_));
  tokens_counted_ = tokens;
  ArmTimer();
}

void HttpServer::Impl::ArmTimer() {
  const int64_t next = engine_.NextWakeNanos();
  if (next < 0) return;
  if (timer_armed_ && timer_deadline_ <= next) return;
  timer_armed_ = true;
  timer_deadline_ = next;
  const int64_t delay = std::max<int64_t>(0, next - clock_->NowNanos());
  engine_timer_->expires_after(std::chrono::nanoseconds(delay));
  engine_timer_->async_wait(net::bind_executor(*engine_strand_, [this](error_code ec) {
    if (ec == net::error::operation_aborted) return;
    timer_armed_ = false;
    RunEngine([] {});
  }));
}

// ---------------------------------------------------------------- HttpServer

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() = default;

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(const SimConfig& config,
                                                         const Clock* clock) {
  MATRIX_RETURN_IF_ERROR(ValidateSimConfig(config));
  auto impl = std::make_unique<Impl>(config, clock);
  MATRIX_RETURN_IF_ERROR(impl->Listen());
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

const std::string& HttpServer::address() const { return impl_->address_; }
std::string HttpServer::metrics_address() const {
  return impl_->metrics_server_ ? impl_->metrics_server_->address() : std::string();
}
Status HttpServer::PublishAddress() const { return impl_->PublishAddress(); }
void HttpServer::Run() { impl_->Run(); }
void HttpServer::Stop() { impl_->Stop(); }
const SimStats& HttpServer::stats() const { return impl_->stats_; }

int64_t RaiseOpenFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  rlim_t target = rl.rlim_max == RLIM_INFINITY ? static_cast<rlim_t>(1 << 20) : rl.rlim_max;
  if (rl.rlim_cur < target) {
    rlimit raised = rl;
    raised.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  return static_cast<int64_t>(rl.rlim_cur);
}

}  // namespace matrix::llm_sim
