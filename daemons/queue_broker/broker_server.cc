// BrokerServer: matrix-broker's ROUTER socket and peer links on one
// EventLoop, single-threaded apart from Stop() (the loop's own thread-safe
// Stop) and the metrics server's own HTTP threads, which only read the
// metrics registry.
#include "daemons/queue_broker/broker_server.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <variant>

#include "common/base/files.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/base/strings.h"
#include "common/base/utf8.h"
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

// The peers a broker links to: the `fanout` nodes nearest to `self` in the
// sorted ring of node names, alternating after and before it.
std::vector<std::string> NearestPeers(std::vector<std::string> nodes, const std::string& self, size_t fanout) {
  nodes.push_back(self);
  std::sort(nodes.begin(), nodes.end());
  nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  const size_t n = nodes.size();
  const size_t me = std::find(nodes.begin(), nodes.end(), self) - nodes.begin();
  std::vector<std::string> out;
  for (size_t step = 1; out.size() < std::min(fanout, n - 1) && step < n; ++step) {
    const std::string& after = nodes[(me + step) % n];
    const std::string& before = nodes[(me + n - step) % n];
    for (const std::string* c : {&after, &before})
      if (out.size() < fanout && *c != self && std::find(out.begin(), out.end(), *c) == out.end())
        out.push_back(*c);
  }
  return out;
}

}  // namespace

struct BrokerServer::Link {
  std::string name;  // "link:<node>": the upstream name of tasks it delivers
  std::string node;
  std::string endpoint;
  std::unique_ptr<transport::Socket> socket;
  std::vector<std::pair<std::string, uint32_t>> offered;  // roles last registered
  bool registered = false;   // a RegisterAck came back
  int64_t last_heard_ns = 0;
  int64_t last_sent_ns = 0;
  int64_t last_register_ns = 0;
};

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
  server->ctx_ = ctx;
  transport::SocketOptions opts;
  opts.max_message_bytes = static_cast<int64_t>(server->config_.max_message_bytes);
  if (server->config_.keys) {
    Status zap = ctx->RestrictCurveClients({server->config_.keys->public_key});
    if (!zap.ok() && zap.code() != StatusCode::kFailedPrecondition) return zap;  // already running: fine
    opts = transport::CurveServerOptions(*server->config_.keys, opts);
  }
  MATRIX_ASSIGN_OR_RETURN(server->loop_, EventLoop::Create(clock));
  MATRIX_ASSIGN_OR_RETURN(server->socket_, transport::Socket::Bind(*ctx, transport::Socket::Kind::kRouter,
                                                                  server->config_.bind, opts));
  if (server->config_.keys) MATRIX_RETURN_IF_ERROR(server->socket_->WatchHandshakeFailures());
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
  auto invalid = [&](const std::string& why) { Malformed(frames.empty() ? "" : frames[0], why); };
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
    auto unpacked = wire::UnpackPayloads(frames, 2, expected, config_.max_message_bytes);
    if (!unpacked.ok()) return invalid(unpacked.status().message());
    std::vector<std::string> payloads = std::move(*unpacked);
    for (const auto& p : payloads) {
      Status st = wire::VerifyTask(p, config_.max_message_bytes);
      if (!st.ok()) return invalid("task payload: " + st.message());
    }
    if (!core_.IsRegistered(peer) && !sub->items.empty()) {
      // Sources and clients may submit without serving a role.
    }
    core_.OnSubmit(peer, *sub, std::move(payloads));
  } else if (auto* hb = std::get_if<wire::HeartbeatMsg>(&control->body)) {
    core_.OnHeartbeat(peer, *hb);
  } else if (std::holds_alternative<wire::StatsRequestMsg>(control->body)) {
    out.push_back({peer, wire::Control{config_.core.broker_id, wire::StatsReplyMsg{StatsJson()}}, {}});
  } else {
    return invalid("unexpected message type for a broker");
  }
  SendAll(out);
}

std::string BrokerServer::StatsJson() const { return DumpJson(core_.Stats()); }

void BrokerServer::Malformed(const std::string& peer, const std::string& why) {
  core_.CountInvalid();
  int64_t held_back = 0;
  if (malformed_log_.Allow(peer, clock_->NowMillis(), &held_back))
    LOG_WARN << "dropped malformed message from peer '" << Printable(peer, 64) << "': " << why
             << PeerLogLimiter::HeldBack(held_back);
}

void BrokerServer::SendAll(std::vector<Outgoing>& out) {
  for (auto& o : out) {
    transport::Frames frames;
    frames.reserve(3);
    frames.push_back(o.worker);
    frames.push_back(wire::EncodeControl(o.control));
    if (!o.payloads.empty()) frames.push_back(std::move(o.payloads));
    Status st = socket_->Send(std::move(frames));
    if (st.ok()) {
      metrics_->ByType(metrics_->set.messages_sent, metrics_->sent, o.control.body.index()).Inc();
    } else {
      LOG_WARN << "send to " << Printable(o.worker, 64) << " failed: " << st.message();
    }
    core_.MarkSent(o.worker);
  }
  out.clear();
}

Status BrokerServer::Run() {
  MATRIX_RETURN_IF_ERROR(socket_->WatchOn(*loop_, [this] {
    // Dispatch after every few messages rather than after draining the
    // socket, so workers run one batch while the next is being routed.
    for (int i = 0; i < 4096 && socket_->TryRecv(&frames_); ++i) {
      HandleMessage(frames_);
      if (i % 8 == 7) {
        core_.Dispatch(&out_);
        SendAll(out_);
      }
    }
  }));
  if (config_.signal_fd >= 0) {
    MATRIX_RETURN_IF_ERROR(loop_->WatchSignals(config_.signal_fd, [this](int sig) {
      LOG_INFO << "signal " << sig << ": broker stopping with " << core_.LeaseCount() << " leases out";
      loop_->Stop();
    }));
  }
  // What the messages of a turn made dispatchable goes out before the wait.
  loop_->EachTurn([this] {
    core_.Dispatch(&out_);
    SendAll(out_);
    if (!links_.empty()) SendUpstreamAcks();
    return int64_t{-1};
  });
  // Expiry, links and metrics run on idle loops too, every 100 ms.
  const EventLoop::TimerId tick = loop_->Every(100'000'000, [this] {
    core_.Tick();
    if (!links_.empty()) TendLinks();
    if (int64_t refused = socket_->TakeHandshakeFailures(); refused > 0) {
      if (auth_failures_ < 20) {
        LOG_WARN << "refused " << refused << " connection(s) to " << socket_->endpoint()
                 << " in the handshake: no CURVE or not the job's keys";
      }
      auth_failures_ += refused;
      metrics_->set.auth_failures.Inc(static_cast<double>(refused));
    }
    for (const auto& w : core_.WorkersNeedingHeartbeat())
      out_.push_back({w, wire::Control{config_.core.broker_id, wire::HeartbeatMsg{}}, {}});
    SendAll(out_);
    UpdateMetrics();
  });
  EventLoop::TimerId discovery = 0;
  if (!config_.nodes_dir.empty()) {
    // Peers: every second while the job starts, then every 5 s.
    DiscoverPeers();
    const int64_t started_ns = clock_->NowNanos();
    discovery = loop_->Every(1'000'000'000, [this, started_ns, seconds = 0]() mutable {
      ++seconds;
      if (clock_->NowNanos() - started_ns < 30'000'000'000 || seconds % 5 == 0) DiscoverPeers();
    });
  }
  loop_->Run();
  loop_->Cancel(tick);
  loop_->Cancel(discovery);
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
  Advance(m.forwards, c.forwarded, &last.forwarded);
  Advance(m.steals, c.stolen, &last.stolen);
  Advance(m.tasks_from_peers, c.from_peers, &last.from_peers);
  m.load.Set(core_.Load());
  int alive = 0;
  for (const auto& [name, link] : links_) alive += link->registered ? 1 : 0;
  m.peers.Set(alive);
  m.leases_outstanding.Set(static_cast<double>(core_.LeaseCount()));
  m.workers.Set(static_cast<double>(core_.WorkerCount()));
  for (const RoleState& r : core_.RoleStates()) {
    const metrics::Labels labels{{"role", r.role}};
    m.queue_depth.With(labels).Set(static_cast<double>(r.depth));
    m.queue_oldest_age_seconds.With(labels).Set(r.oldest_age_s);
    m.credit_free.With(labels).Set(static_cast<double>(r.credit_free));
  }
}

void BrokerServer::DiscoverPeers() {
  // One listing of the node directories, then only the chosen neighbours'
  // endpoint files: a scan costs the same few reads with 10 nodes or 1,000.
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(config_.nodes_dir, ec)) {
    const std::string node = entry.path().filename().string();
    if (node != config_.node && !node.empty() && node[0] != '.') names.push_back(node);
  }
  std::map<std::string, std::string> wanted;  // link name -> endpoint
  std::vector<std::string> candidates = NearestPeers(names, config_.node, names.size());
  for (const auto& node : candidates) {
    if (wanted.size() >= config_.peer_fanout) break;
    auto ep = ReadFile(config_.nodes_dir + "/" + node + "/endpoints/broker");
    if (ep.ok() && !Trim(*ep).empty()) wanted["link:" + node] = Trim(*ep);
  }
  for (auto it = links_.begin(); it != links_.end();) {
    auto w = wanted.find(it->first);
    if (w == wanted.end() || w->second != it->second->endpoint) {
      LOG_INFO << "peer link to " << it->second->node << " closed";
      loop_->Unwatch(it->second->socket->fd());
      it = links_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [name, endpoint] : wanted) {
    if (links_.count(name)) continue;
    transport::SocketOptions opts;
    opts.max_message_bytes = static_cast<int64_t>(config_.max_message_bytes);
    opts.identity = "peer:" + config_.core.broker_id;
    if (config_.keys) opts = transport::CurveClientOptions(*config_.keys, opts);
    auto sock = transport::Socket::Connect(*ctx_, transport::Socket::Kind::kDealer, endpoint, opts);
    if (!sock.ok()) {
      LOG_WARN << "cannot link to peer " << name << " at " << endpoint << ": " << sock.status().message();
      continue;
    }
    auto link = std::make_unique<Link>();
    link->name = name;
    link->node = name.substr(5);
    link->endpoint = endpoint;
    link->socket = std::move(*sock);
    link->last_heard_ns = clock_->NowNanos();
    Link* raw = link.get();
    Status watched = raw->socket->WatchOn(*loop_, [this, raw] {
      for (int i = 0; i < 1024 && raw->socket->TryRecv(&frames_); ++i) HandleLinkMessage(*raw, frames_);
    });
    if (!watched.ok()) {
      LOG_WARN << "cannot watch the link to peer " << name << ": " << watched.message();
      continue;
    }
    LOG_INFO << "peer link to " << link->node << " at " << endpoint;
    links_[name] = std::move(link);
  }
}

void BrokerServer::SendOnLink(Link& link, const wire::Control& control) {
  Status st = link.socket->Send({wire::EncodeControl(control)});
  if (!st.ok()) LOG_DEBUG << "send on link to " << link.node << " failed: " << st.message();
  link.last_sent_ns = clock_->NowNanos();
}

void BrokerServer::TendLinks() {
  const int64_t now = clock_->NowNanos();
  const int64_t interval = static_cast<int64_t>(config_.core.heartbeat_ms) * 1'000'000;
  const auto offer = core_.PeerOffer(config_.peer_window);
  for (auto& [name, link] : links_) {
    if (now - link->last_heard_ns > 3 * interval && now - link->last_register_ns > 3 * interval) {
      // Silent peer: start over (it may have restarted at the same address).
      if (link->registered) LOG_WARN << "peer " << link->node << " silent; relinking";
      link->registered = false;
      link->offered.clear();
    }
    if (link->offered != offer || (!link->registered && now - link->last_register_ns > interval)) {
      wire::RegisterMsg reg;
      reg.worker_id = "peer:" + config_.core.broker_id;
      reg.roles = offer;
      reg.peer = true;
      reg.node = config_.node;
      reg.load = core_.Load();
      SendOnLink(*link, wire::Control{config_.core.broker_id, reg});
      link->offered = offer;
      link->last_register_ns = now;
    } else if (now - link->last_sent_ns > interval / 4) {
      SendOnLink(*link, wire::Control{config_.core.broker_id, wire::HeartbeatMsg{core_.Load()}});
    }
  }
}

void BrokerServer::SendUpstreamAcks() {
  auto acks = core_.TakeUpstreamAcks();
  if (acks.empty()) return;
  std::map<std::string, wire::SubmitMsg> by_link;
  for (const auto& [link, lease] : acks) by_link[link].items.push_back({lease, "", "", false, false});
  for (auto& [name, submit] : by_link) {
    auto it = links_.find(name);
    if (it != links_.end()) SendOnLink(*it->second, wire::Control{config_.core.broker_id, std::move(submit)});
  }
}

void BrokerServer::HandleLinkMessage(Link& link, std::vector<std::string>& frames) {
  auto invalid = [&](const std::string& why) { Malformed("broker of " + link.node, why); };
  if (frames.empty()) return invalid("missing envelope");
  auto control = wire::DecodeControl(frames[0]);
  if (!control.ok()) return invalid(control.status().message());
  link.last_heard_ns = clock_->NowNanos();
  if (std::holds_alternative<wire::RegisterAckMsg>(control->body)) {
    if (!link.registered) LOG_INFO << "linked to peer " << link.node;
    link.registered = true;
  } else if (auto* d = std::get_if<wire::DeliverMsg>(&control->body)) {
    auto payloads = wire::UnpackPayloads(frames, 1, d->items.size(), config_.max_message_bytes);
    if (!payloads.ok()) return invalid(payloads.status().message());
    for (size_t i = 0; i < d->items.size(); ++i) {
      Status st = wire::VerifyTask((*payloads)[i], config_.max_message_bytes);
      if (!st.ok()) {
        invalid("task payload: " + st.message());
        continue;  // not acked: the peer keeps it under lease
      }
      core_.OnPeerDeliver(link.name, d->items[i], std::move((*payloads)[i]));
    }
  } else if (!std::holds_alternative<wire::HeartbeatMsg>(control->body)) {
    invalid("unexpected message type on a peer link");
  }
}

}  // namespace matrix::broker
