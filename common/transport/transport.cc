#include "common/transport/transport.h"

#include <errno.h>
#include <zmq.h>

#include <cstring>

namespace matrix::transport {
namespace {

Status ZmqError(const std::string& what) {
  return Unavailable(what + ": " + zmq_strerror(zmq_errno()));
}

Status ApplyOptions(void* sock, Socket::Kind kind, const SocketOptions& o) {
  int zero = 0;
  zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &o.max_message_bytes, sizeof(o.max_message_bytes));
  zmq_setsockopt(sock, ZMQ_SNDHWM, &o.send_hwm, sizeof(o.send_hwm));
  zmq_setsockopt(sock, ZMQ_RCVHWM, &o.recv_hwm, sizeof(o.recv_hwm));
  if (kind == Socket::Kind::kRouter) {
    int one = 1;
    zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
  }
  if (!o.identity.empty()) {
    if (zmq_setsockopt(sock, ZMQ_ROUTING_ID, o.identity.data(), o.identity.size()) != 0)
      return ZmqError("set identity");
  }
  if (o.curve_server) {
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, o.curve_secret_key.c_str(), 41) != 0)
      return ZmqError("set CURVE server keys");
  } else if (!o.curve_server_key.empty()) {
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, o.curve_server_key.c_str(), 41) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, o.curve_public_key.c_str(), 41) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, o.curve_secret_key.c_str(), 41) != 0)
      return ZmqError("set CURVE client keys");
  }
  return Status::Ok();
}

int ZmqType(Socket::Kind kind) {
  switch (kind) {
    case Socket::Kind::kRouter: return ZMQ_ROUTER;
    case Socket::Kind::kDealer: return ZMQ_DEALER;
    case Socket::Kind::kPair: return ZMQ_PAIR;
  }
  return ZMQ_DEALER;
}

}  // namespace

Context::Context() : ctx_(zmq_ctx_new()) { zmq_ctx_set(ctx_, ZMQ_MAX_SOCKETS, 65536); }
Context::~Context() { zmq_ctx_term(ctx_); }

StatusOr<std::unique_ptr<Socket>> Socket::Bind(Context& ctx, Kind kind, const std::string& endpoint,
                                               const SocketOptions& options) {
  void* sock = zmq_socket(ctx.raw(), ZmqType(kind));
  if (!sock) return ZmqError("create socket");
  Status st = ApplyOptions(sock, kind, options);
  if (!st.ok() || zmq_bind(sock, endpoint.c_str()) != 0) {
    Status err = st.ok() ? ZmqError("bind " + endpoint) : st;
    zmq_close(sock);
    return err;
  }
  char buf[512];
  size_t len = sizeof(buf);
  zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &len);
  return std::unique_ptr<Socket>(new Socket(sock, std::string(buf)));
}

StatusOr<std::unique_ptr<Socket>> Socket::Connect(Context& ctx, Kind kind,
                                                  const std::string& endpoint,
                                                  const SocketOptions& options) {
  void* sock = zmq_socket(ctx.raw(), ZmqType(kind));
  if (!sock) return ZmqError("create socket");
  Status st = ApplyOptions(sock, kind, options);
  if (!st.ok() || zmq_connect(sock, endpoint.c_str()) != 0) {
    Status err = st.ok() ? ZmqError("connect " + endpoint) : st;
    zmq_close(sock);
    return err;
  }
  return std::unique_ptr<Socket>(new Socket(sock, endpoint));
}

Socket::~Socket() { zmq_close(sock_); }

Status Socket::Send(const Frames& frames) {
  for (size_t i = 0; i < frames.size(); ++i) {
    int flags = ZMQ_DONTWAIT | (i + 1 < frames.size() ? ZMQ_SNDMORE : 0);
    while (zmq_send(sock_, frames[i].data(), frames[i].size(), flags) < 0) {
      if (zmq_errno() == EINTR) continue;
      return ZmqError("send");
    }
  }
  return Status::Ok();
}

bool Socket::TryRecv(Frames* frames) {
  frames->clear();
  while (true) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    int rc = zmq_msg_recv(&msg, sock_, ZMQ_DONTWAIT);
    if (rc < 0) {
      zmq_msg_close(&msg);
      if (zmq_errno() == EINTR) continue;
      return false;  // EAGAIN (first frame) cannot happen mid-message
    }
    frames->emplace_back(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
    bool more = zmq_msg_more(&msg);
    zmq_msg_close(&msg);
    if (!more) return true;
  }
}

int Poller::AddSocket(Socket* socket) {
  items_.push_back({socket->raw(), -1});
  return static_cast<int>(items_.size() - 1);
}

int Poller::AddFd(int fd) {
  items_.push_back({nullptr, fd});
  return static_cast<int>(items_.size() - 1);
}

bool Poller::Poll(int timeout_ms) {
  std::vector<zmq_pollitem_t> items(items_.size());
  for (size_t i = 0; i < items_.size(); ++i) {
    items[i].socket = items_[i].first;
    items[i].fd = items_[i].second;
    items[i].events = ZMQ_POLLIN;
    items[i].revents = 0;
  }
  int rc = zmq_poll(items.data(), static_cast<int>(items.size()), timeout_ms);
  revents_.assign(items_.size(), 0);
  if (rc < 0) return false;
  for (size_t i = 0; i < items.size(); ++i) revents_[i] = items[i].revents;
  return true;
}

bool Poller::Readable(int index) const {
  return index >= 0 && static_cast<size_t>(index) < revents_.size() && (revents_[index] & ZMQ_POLLIN);
}

StatusOr<CurveKeyPair> GenerateCurveKeyPair() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) return ZmqError("CURVE key generation");
  return CurveKeyPair{pub, sec};
}

}  // namespace matrix::transport
