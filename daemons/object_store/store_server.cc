// StoreServer: matrix-store's ROUTER socket on an EventLoop. Single-threaded
// apart from Stop() (the loop's thread-safe Stop) and the metrics server's
// HTTP threads, which only read the metrics registry.
#include "daemons/object_store/store_server.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <variant>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "common/base/json.h"
#include "common/base/log.h"
#include "common/base/utf8.h"
#include "common/base/signals.h"
#include "common/metrics/metrics.h"
#include "common/metrics/store_metrics.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "common/wire/control.h"

namespace matrix::store {
namespace {

// Envelopes are small (ids and checksums); payloads travel in their own frames.
constexpr size_t kMaxEnvelopeBytes = 4 << 20;
// Messages handled per turn before the signal and the sweep are looked at again.
constexpr int kMaxMessagesPerIteration = 4096;

// A peer's routing identity (any bytes) as log text.
std::string PeerName(const std::string& identity) { return Printable(identity, 64); }

// Request types timed by matrix_store_request_duration_seconds.
enum RequestType { kPutRequest, kGetRequest, kFreeRequest, kStatsRequest, kRequestTypes };
constexpr std::array<const char*, kRequestTypes> kRequestTypeNames = {"put", "get", "free", "stats"};

// Advances `counter` by what `now` gained since `*last`.
void Advance(const metrics::Counter& counter, int64_t now, int64_t* last) {
  if (now > *last) counter.Inc(static_cast<double>(now - *last));
  *last = now;
}

}  // namespace

struct StoreServer::Metrics {
  explicit Metrics(const Clock& clock) : set(registry) {
    metrics::RegisterProcessMetrics(registry, clock);
    for (int t = 0; t < kRequestTypes; ++t)
      request_duration[t] = set.request_duration_seconds.With({{"type", kRequestTypeNames[t]}});
  }
  void Observe(RequestType type, int64_t start_ns, const Clock& clock) const {
    request_duration[type].Observe(static_cast<double>(clock.NowNanos() - start_ns) / 1e9);
  }

  metrics::MetricsRegistry registry;
  metrics::StoreMetrics set;
  std::unique_ptr<metrics::MetricsServer> server;
  std::array<metrics::Histogram, kRequestTypes> request_duration;
  StoreServerStats synced;  // counts already added to the metrics
};

StatusOr<std::unique_ptr<StoreServer>> StoreServer::Create(StoreConfig config,
                                                           transport::Context* ctx,
                                                           const Clock* clock) {
  if (config.sweep_interval_ms <= 0) return FailedPrecondition("sweep interval must be positive");
  auto table = ObjectTable::Create(config, clock);
  if (!table.ok()) return table.status();

  transport::SocketOptions opts;
  // A payload frame may be as large as the largest object; ZeroMQ drops the
  // connection of a peer that sends a larger frame.
  opts.max_message_bytes = std::max<int64_t>(config.max_object_bytes, kMaxEnvelopeBytes) + 4096;
  if (config.keys) {
    Status zap = ctx->RestrictCurveClients({config.keys->public_key});
    if (!zap.ok() && zap.code() != StatusCode::kFailedPrecondition) return zap;  // already running: fine
    opts = transport::CurveServerOptions(*config.keys, opts);
  }
  auto socket = transport::Socket::Bind(*ctx, transport::Socket::Kind::kRouter, config.bind, opts);
  if (!socket.ok()) return socket.status();
  if (config.keys) MATRIX_RETURN_IF_ERROR((*socket)->WatchHandshakeFailures());

  std::unique_ptr<StoreServer> server(new StoreServer(std::move(config), clock, std::move(table).value()));
  server->socket_ = std::move(socket).value();
  MATRIX_ASSIGN_OR_RETURN(server->loop_, EventLoop::Create(clock));
  StoreServer* self = server.get();
  MATRIX_RETURN_IF_ERROR(server->socket_->WatchOn(*server->loop_, [self] {
    transport::Frames frames;
    for (int i = 0; i < kMaxMessagesPerIteration && self->socket_->TryRecv(&frames); ++i) self->HandleMessage(frames);
    self->UpdateMetrics();
  }));
  if (server->config_.signal_fd >= 0) {
    MATRIX_RETURN_IF_ERROR(server->loop_->WatchSignals(server->config_.signal_fd, [self](int sig) {
      // A signalfd names the signal; any other fd (a pipe, an eventfd in
      // tests) simply counts as a stop request.
      if (sig > 0) {
        LOG_INFO << "received signal " << sig << ", shutting down";
      } else {
        LOG_INFO << "stop requested";
      }
      self->Stop();
    }));
  }
  server->loop_->Every(int64_t{server->config_.sweep_interval_ms} * 1'000'000, [self] { self->Sweep(); });

  // Metrics first: once the store's endpoint file exists, everything is up.
  if (!server->config_.metrics_bind.empty()) {
    auto metrics_server =
        metrics::MetricsServer::Create(server->metrics_->registry, server->config_.metrics_bind);
    if (!metrics_server.ok()) return metrics_server.status();
    server->metrics_->server = std::move(metrics_server).value();
    if (!server->config_.run_dir.empty()) {
      Status st =
          server->metrics_->server->PublishEndpoint(server->config_.run_dir, server->config_.name);
      if (!st.ok()) return st;
    }
  }
  if (!server->config_.run_dir.empty()) {
    Status st = WriteEndpointFile(server->config_.run_dir, server->config_.name, server->endpoint());
    if (!st.ok()) return st;
  }
  return server;
}

StoreServer::StoreServer(StoreConfig config, const Clock* clock, std::unique_ptr<ObjectTable> table)
    : config_(std::move(config)),
      clock_(clock),
      table_(std::move(table)),
      metrics_(std::make_unique<Metrics>(*clock)) {
  metrics_->set.memory_budget_bytes.Set(static_cast<double>(config_.memory_budget_bytes));
}

StoreServer::~StoreServer() = default;

const std::string& StoreServer::endpoint() const { return socket_->endpoint(); }

std::string StoreServer::metrics_address() const {
  return metrics_->server ? metrics_->server->address() : std::string();
}

void StoreServer::Stop() { loop_->Stop(); }

Status StoreServer::Run() {
  LOG_INFO << "store " << config_.name << " of node " << config_.node << " serving on "
           << endpoint()
           << (metrics_->server ? ", metrics at http://" + metrics_->server->address() + "/metrics"
                                : std::string())
           << " (memory budget " << config_.memory_budget_bytes << " bytes, spill dir "
           << (config_.spill_dir.empty() ? "none" : config_.spill_dir) << ")";
  loop_->Run();
  LOG_INFO << "store stopping: " << StatsJson();
  return Status::Ok();
}

void StoreServer::RunOnce(int timeout_ms) { loop_->RunOnce(int64_t{timeout_ms} * 1'000'000); }

void StoreServer::Sweep() {
  const int64_t now = clock_->NowMillis();
  int64_t expired = table_->ExpireOlderThan(now);
  if (expired > 0) {
    LOG_INFO << "expired " << expired << " objects nobody freed";
  }
  if (int64_t refused = socket_->TakeHandshakeFailures(); refused > 0) {
    LOG_WARN << "refused " << refused << " connection(s) in the handshake: no CURVE or not the job's keys";
    metrics_->set.auth_failures.Inc(static_cast<double>(refused));
  }
  UpdateMetrics();
}

void StoreServer::UpdateMetrics() {
  const metrics::StoreMetrics& m = metrics_->set;
  const StoreServerStats now = stats();
  StoreServerStats& last = metrics_->synced;
  m.memory_objects.Set(static_cast<double>(now.table.memory_objects));
  m.disk_objects.Set(static_cast<double>(now.table.objects - now.table.memory_objects));
  m.memory_bytes.Set(static_cast<double>(now.table.memory_bytes));
  m.disk_bytes.Set(static_cast<double>(now.table.disk_bytes));
  Advance(m.puts, now.table.puts, &last.table.puts);
  Advance(m.put_errors, now.table.put_errors, &last.table.put_errors);
  Advance(m.gets, now.table.gets, &last.table.gets);
  Advance(m.get_misses, now.table.get_misses, &last.table.get_misses);
  Advance(m.frees, now.table.frees, &last.table.frees);
  Advance(m.spills, now.table.spills, &last.table.spills);
  Advance(m.promotions, now.table.promotions, &last.table.promotions);
  Advance(m.expirations, now.table.expirations, &last.table.expirations);
  Advance(m.checksum_failures, now.table.checksum_failures, &last.table.checksum_failures);
  Advance(m.invalid_messages, now.malformed_messages, &last.malformed_messages);
}

void StoreServer::HandleMessage(std::vector<std::string>& frames) {
  if (frames.size() < 2) {
    Malformed(frames.empty() ? "" : frames[0], "message without an envelope frame");
    return;
  }
  const int64_t start_ns = clock_->NowNanos();
  const std::string& peer = frames[0];
  auto control = wire::DecodeControl(frames[1], kMaxEnvelopeBytes);
  if (!control.ok()) {
    Malformed(peer, control.status().message());
    return;
  }
  const size_t payloads = frames.size() - 2;

  if (auto* put = std::get_if<wire::PutMsg>(&control->body)) {
    if (payloads != put->items.size()) {
      Malformed(peer, "Put with " + std::to_string(put->items.size()) + " items carries " +
                          std::to_string(payloads) + " payload frames");
      return;
    }
    ++stats_.messages;
    wire::PutReplyMsg reply{put->request_id, {}};
    reply.items.reserve(put->items.size());
    for (size_t i = 0; i < put->items.size(); ++i) {
      const wire::ObjectItem& in = put->items[i];
      std::string& payload = frames[2 + i];
      wire::ObjectItem out{in.id, payload.size(), in.checksum, 0, true, ""};
      Status st;
      if (in.size != payload.size()) {
        st = DataLoss("object " + Hex64(in.id) + ": payload is " + std::to_string(payload.size()) +
                      " bytes, its item says " + std::to_string(in.size));
      } else {
        st = table_->Put(in.id, std::move(payload), in.checksum, static_cast<int64_t>(in.ttl_ms));
      }
      if (!st.ok()) {
        out.ok = false;
        out.error = st.ToString();
      }
      reply.items.push_back(std::move(out));
    }
    Reply({peer, wire::EncodeControl({config_.name, std::move(reply)})});
    metrics_->Observe(kPutRequest, start_ns, *clock_);
    return;
  }

  if (auto* get = std::get_if<wire::GetMsg>(&control->body)) {
    if (payloads != 0) {
      Malformed(peer, "Get carries " + std::to_string(payloads) + " payload frames");
      return;
    }
    ++stats_.messages;
    wire::GetReplyMsg reply{get->request_id, {}};
    reply.items.reserve(get->ids.size());
    std::vector<std::string> out_frames;
    out_frames.reserve(get->ids.size() + 2);
    out_frames.push_back(peer);
    out_frames.emplace_back();  // the envelope, encoded once the items are known
    for (uint64_t id : get->ids) {
      wire::ObjectItem item{id, 0, 0, 0, true, ""};
      table_->Lookup(id, &item.size, &item.checksum);
      auto data = table_->Get(id);
      if (data.ok()) {
        out_frames.push_back(std::move(data).value());
      } else {
        item.ok = false;
        item.error = data.status().ToString();
        out_frames.emplace_back();
      }
      reply.items.push_back(std::move(item));
    }
    out_frames[1] = wire::EncodeControl({config_.name, std::move(reply)});
    Reply(std::move(out_frames));
    metrics_->Observe(kGetRequest, start_ns, *clock_);
    return;
  }

  if (auto* free_msg = std::get_if<wire::FreeMsg>(&control->body)) {
    if (payloads != 0) {
      Malformed(peer, "Free carries " + std::to_string(payloads) + " payload frames");
      return;
    }
    ++stats_.messages;
    for (uint64_t id : free_msg->ids) table_->Free(id);
    metrics_->Observe(kFreeRequest, start_ns, *clock_);
    return;
  }

  if (std::holds_alternative<wire::StatsRequestMsg>(control->body)) {
    ++stats_.messages;
    Reply({peer, wire::EncodeControl({config_.name, wire::StatsReplyMsg{StatsJson()}})});
    metrics_->Observe(kStatsRequest, start_ns, *clock_);
    return;
  }

  Malformed(peer, "unexpected message type " + std::to_string(control->body.index()) + " for a store");
}

void StoreServer::Malformed(const std::string& peer, const std::string& why) {
  ++stats_.malformed_messages;
  int64_t held_back = 0;
  if (malformed_log_.Allow(peer, clock_->NowMillis(), &held_back))
    LOG_WARN << "dropped malformed message from peer " << PeerName(peer) << ": " << why
             << PeerLogLimiter::HeldBack(held_back);
}

void StoreServer::Reply(std::vector<std::string> frames) {
  Status st = socket_->Send(frames);
  if (!st.ok()) {
    ++stats_.send_failures;
    LOG_DEBUG << "reply to peer " << PeerName(frames[0]) << " not sent: " << st.message();
  }
}

StoreServerStats StoreServer::stats() const {
  StoreServerStats s = stats_;
  s.table = table_->stats();
  return s;
}

std::string StoreServer::StatsJson() const {
  StoreServerStats s = stats();
  Json j = {
      {"node", config_.node},
      {"name", config_.name},
      {"endpoint", endpoint()},
      {"objects", s.table.objects},
      {"memory_bytes", s.table.memory_bytes},
      {"disk_bytes", s.table.disk_bytes},
      {"memory_budget_bytes", config_.memory_budget_bytes},
      {"puts", s.table.puts},
      {"put_errors", s.table.put_errors},
      {"gets", s.table.gets},
      {"get_misses", s.table.get_misses},
      {"frees", s.table.frees},
      {"spills", s.table.spills},
      {"promotions", s.table.promotions},
      {"expirations", s.table.expirations},
      {"checksum_failures", s.table.checksum_failures},
      {"messages", s.messages},
      {"malformed_messages", s.malformed_messages},
      {"send_failures", s.send_failures},
  };
  return DumpJson(j);
}

}  // namespace matrix::store
