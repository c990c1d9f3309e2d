#include "daemons/queue_broker/broker_server.h"

#include "common/base/files.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"

namespace matrix::broker {

BrokerServer::BrokerServer(BrokerServerConfig config, const Clock* clock)
    : config_(std::move(config)), clock_(clock), core_(config_.core, clock) {}

BrokerServer::~BrokerServer() = default;

const std::string& BrokerServer::endpoint() const { return socket_->endpoint(); }

StatusOr<std::unique_ptr<BrokerServer>> BrokerServer::Create(BrokerServerConfig config,
                                                             transport::Context* ctx,
                                                             const Clock* clock) {
  std::unique_ptr<BrokerServer> server(new BrokerServer(std::move(config), clock));
  transport::SocketOptions opts;
  opts.max_message_bytes = static_cast<int64_t>(server->config_.max_message_bytes);
  MATRIX_ASSIGN_OR_RETURN(server->socket_, transport::Socket::Bind(*ctx, transport::Socket::Kind::kRouter,
                                                                  server->config_.bind, opts));
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
    if (invalid_logged_++ < 20)
      LOG_WARN << "dropping invalid message from peer '" << (frames.empty() ? "" : frames[0])
               << "': " << why;
  };
  if (frames.size() < 2) return invalid("missing envelope");
  const std::string& peer = frames[0];
  auto control = wire::DecodeControl(frames[1]);
  if (!control.ok()) return invalid(control.status().message());
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
    if (!st.ok()) LOG_WARN << "send to " << o.worker << " failed: " << st.message();
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
    if (!poller.Poll(50)) continue;
    if (sig_idx >= 0 && poller.Readable(sig_idx)) {
      int sig = ReadSignal(config_.signal_fd);
      LOG_INFO << "signal " << sig << ": broker stopping with " << core_.LeaseCount() << " leases out";
      break;
    }
    if (poller.Readable(sock_idx)) {
      // Drain a bounded batch so heartbeats and dispatch stay timely.
      for (int i = 0; i < 4096 && socket_->TryRecv(&frames); ++i) HandleMessage(frames);
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
    }
  }
  return Status::Ok();
}

}  // namespace matrix::broker
