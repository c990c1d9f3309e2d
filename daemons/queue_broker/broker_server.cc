// BrokerServer: the ROUTER event loop of matrix-broker, single-threaded apart
// from Stop() (an atomic flag) and the metrics server's own HTTP threads,
// which only read the metrics registry.
#include "daemons/queue_broker/broker_server.h"

#include <array>
#include <variant>

#include "common/base/files.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/metrics/broker_metrics.h"
#include "common/metrics/metrics.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"

namespace matrix::broker {
namespace {

constexpr size_t kMessageTypes = std::variant_size_v<wire::ControlBody>;
// The `type` label of each ControlBody alternative, in variant order.
constexpr std::array<const char*, kMessageTypes> kMessageTypeNames = {
    "register", "register_ack", "heartbeat", "deliver",  "submit",    "stats_request",
    "stats_reply", "put",       "put_reply", "get",      "get_reply", "free"};
static_assert(kMessageTypeNames.back() != nullptr, "a ControlBody type has no metric label");

// Advances `counter` by what `now` gained since `*last`.
void Advance(const metrics::Counter& counter, int64_t now, int64_t* last) {
  if (now > *last) counter.Inc(static_cast<double>(now - *last));
  *last = now;
}

}  // namespace

struct BrokerServer::Metrics {
  explicit Metrics(const Clock& clock) : set(registry) {
    metrics::RegisterProcessMetrics(registry, clock);
  }
  // Messages by type, resolved on first use so only types seen are exported.
  const metrics::Counter& ByType(const metrics::CounterFamily& family,
                                 std::array<metrics::Counter, kMessageTypes>& cache, size_t type) {
    if (!cache[type].valid()) cache[type] = family.With({{"type", kMessageTypeNames[type]}});
    return cache[type];
  }

  metrics::MetricsRegistry registry;
  metrics::BrokerMetrics set;
  std::unique_ptr<metrics::MetricsServer> server;
  std::array<metrics::Counter, kMessageTypes> received;
  std::array<metrics::Counter, kMessageTypes> sent;
  BrokerCounters synced;  // core counters already added to the metrics
};

BrokerServer::BrokerServer(BrokerServerConfig config, const Clock* clock)
    : config_(std::move(config)),
      clock_(clock),
      core_(config_.core, clock),
      metrics_(std::make_unique<Metrics>(*clock)) {}

BrokerServer::~BrokerServer() = default;

const std::string& BrokerServer::endpoint() const { return socket_->endpoint(); }

std::string BrokerServer::metrics_address() const {
  return metrics_->server ? metrics_->server->address() : std::string();
}

StatusOr<std::unique_ptr<BrokerServer>> BrokerServer::Create(BrokerServerConfig config,
                                                             transport::Context* ctx,
                                                             const Clock* clock) {
  std::unique_ptr<BrokerServer> server(new BrokerServer(std::move(config), clock));
  transport::SocketOptions opts;
  opts.max_message_bytes = static_cast<int64_t>(server->config_.max_message_bytes);
  MATRIX_ASSIGN_OR_RETURN(server->socket_, transport::Socket::Bind(*ctx, transport::Socket::Kind::kRouter,
                                                                  server->config_.bind, opts));
  // Metrics first: once the broker's endpoint file exists, everything is up.
  if (!server->config_.metrics_bind.empty()) {
    MATRIX_ASSIGN_OR_RETURN(server->metrics_->server,
                            metrics::MetricsServer::Create(server->metrics_->registry,
                                                           server->config_.metrics_bind));
    if (!server->config_.run_dir.empty()) {
      MATRIX_RETURN_IF_ERROR(
          server->metrics_->server->PublishEndpoint(server->config_.run_dir, server->config_.name));
    }
    LOG_INFO << "broker metrics at http://" << server->metrics_->server->address() << "/metrics";
  }
  if (!server->config_.run_dir.empty()) {
    MATRIX_RETURN_IF_ERROR(
        WriteEndpointFile(server->config_.run_dir, server->config_.name, server->socket_->endpoint()));
  }
  LOG_INFO << "broker listening on " << server->socket_->endpoint();
  return server;
}

void BrokerServer::HandleMessage(std::vector<std::string>& frames) {
  auto invalid = [&](const std::string& why) {
    core_.CountInvalid();
    if (invalid_logged_++ < 20) {
      LOG_WARN << "dropping invalid message from peer '" << (frames.empty() ? "" : frames[0])
               << "': " << why;
    }
  };
  if (frames.size() < 2) return invalid("missing envelope");
  const std::string& peer = frames[0];
  auto control = wire::DecodeControl(frames[1]);
  if (!control.ok()) return invalid(control.status().message());
  metrics_->ByType(metrics_->set.messages_received, metrics_->received, control->body.index()).Inc();
  std::vector<Outgoing> out;
  if (auto* reg = std::get_if<wire::RegisterMsg>(&control->body)) {
    core_.OnRegister(peer, *reg, &out);
  } else if (auto* sub = std::get_if<wire::SubmitMsg>(&control->body)) {
    size_t expected = 0;
    for (const auto& item : sub->items) expected += item.has_payload ? 1 : 0;
    if (frames.size() != 2 + expected) return invalid("payload frame count does not match items");
    std::vector<std::string> payloads;
    payloads.reserve(expected);
    for (size_t i = 2; i < frames.size(); ++i) {
      Status st = wire::VerifyTask(frames[i], config_.max_message_bytes);
      if (!st.ok()) return invalid("task payload: " + st.message());
      payloads.push_back(std::move(frames[i]));
    }
    if (!core_.IsRegistered(peer) && !sub->items.empty()) {
      // Sources and clients may submit without serving a role.
    }
    core_.OnSubmit(peer, *sub, std::move(payloads));
  } else if (std::holds_alternative<wire::HeartbeatMsg>(control->body)) {
    core_.OnSeen(peer);
  } else if (std::holds_alternative<wire::StatsRequestMsg>(control->body)) {
    out.push_back({peer, wire::Control{config_.core.broker_id, wire::StatsReplyMsg{core_.Stats().dump()}}, {}});
  } else {
    return invalid("unexpected message type for a broker");
  }
  SendAll(out);
}

void BrokerServer::SendAll(std::vector<Outgoing>& out) {
  for (auto& o : out) {
    transport::Frames frames;
    frames.reserve(2 + o.payloads.size());
    frames.push_back(o.worker);
    frames.push_back(wire::EncodeControl(o.control));
    for (auto& p : o.payloads) frames.push_back(std::move(p));
    Status st = socket_->Send(frames);
    if (st.ok()) {
      metrics_->ByType(metrics_->set.messages_sent, metrics_->sent, o.control.body.index()).Inc();
    } else {
      LOG_WARN << "send to " << o.worker << " failed: " << st.message();
    }
    core_.MarkSent(o.worker);
  }
  out.clear();
}

Status BrokerServer::Run() {
  transport::Poller poller;
  int sock_idx = poller.AddSocket(socket_.get());
  int sig_idx = config_.signal_fd >= 0 ? poller.AddFd(config_.signal_fd) : -1;
  std::vector<std::string> frames;
  std::vector<Outgoing> out;
  int64_t last_tick = clock_->NowNanos();
  while (!stop_) {
    // Ticks run on idle loops too, so expiry and metrics do not wait for traffic.
    if (poller.Poll(50)) {
      if (sig_idx >= 0 && poller.Readable(sig_idx)) {
        int sig = ReadSignal(config_.signal_fd);
        LOG_INFO << "signal " << sig << ": broker stopping with " << core_.LeaseCount() << " leases out";
        break;
      }
      if (poller.Readable(sock_idx)) {
        // Dispatch after every few messages rather than after draining the
        // socket, so workers run one batch while the next is being routed.
        for (int i = 0; i < 4096 && socket_->TryRecv(&frames); ++i) {
          HandleMessage(frames);
          if (i % 8 == 7) {
            core_.Dispatch(&out);
            SendAll(out);
          }
        }
      }
    }
    core_.Dispatch(&out);
    SendAll(out);
    int64_t now = clock_->NowNanos();
    if (now - last_tick > 100'000'000) {
      last_tick = now;
      core_.Tick();
      for (const auto& w : core_.WorkersNeedingHeartbeat())
        out.push_back({w, wire::Control{config_.core.broker_id, wire::HeartbeatMsg{}}, {}});
      SendAll(out);
      UpdateMetrics();
    }
  }
  return Status::Ok();
}

void BrokerServer::UpdateMetrics() {
  const metrics::BrokerMetrics& m = metrics_->set;
  const BrokerCounters& c = core_.counters();
  BrokerCounters& last = metrics_->synced;
  Advance(m.tasks_submitted, c.submitted, &last.submitted);
  Advance(m.deliveries, c.delivered, &last.delivered);
  Advance(m.redeliveries, c.redelivered, &last.redelivered);
  Advance(m.acks, c.acked, &last.acked);
  Advance(m.stale_acks, c.stale_acks, &last.stale_acks);
  Advance(m.requeues, c.requeued, &last.requeued);
  Advance(m.invalid_messages, c.invalid, &last.invalid);
  Advance(m.workers_expired, c.workers_expired, &last.workers_expired);
  Advance(m.worker_registrations, c.registrations, &last.registrations);
  Advance(m.payload_received_bytes, c.bytes_in, &last.bytes_in);
  Advance(m.payload_sent_bytes, c.bytes_out, &last.bytes_out);
  m.leases_outstanding.Set(static_cast<double>(core_.LeaseCount()));
  m.workers.Set(static_cast<double>(core_.WorkerCount()));
  for (const RoleState& r : core_.RoleStates()) {
    const metrics::Labels labels{{"role", r.role}};
    m.queue_depth.With(labels).Set(static_cast<double>(r.depth));
    m.queue_oldest_age_seconds.With(labels).Set(r.oldest_age_s);
    m.credit_free.With(labels).Set(static_cast<double>(r.credit_free));
  }
}

}  // namespace matrix::broker
