#include "common/transport/transport.h"

#include <errno.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zmq.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

// libzmq checks whether the process has forked (getpid() against the pid it
// saved) every time one of its threads signals another, and glibc makes
// every getpid() a system call: about 35 per LLM call across the daemons.
// Programs linked with this library answer getpid() from a cached value
// instead, forgotten in the child of every fork() (pthread_atfork). A child
// made by a raw clone() must not call getpid() before exec (the sandbox's
// child uses raw system calls).
namespace {
std::atomic<pid_t> g_cached_pid{0};
void ForgetCachedPid() { g_cached_pid.store(0, std::memory_order_relaxed); }
}  // namespace

extern "C" pid_t getpid() {
  pid_t pid = g_cached_pid.load(std::memory_order_relaxed);
  if (pid != 0) return pid;
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, &ForgetCachedPid); });
  pid = static_cast<pid_t>(::syscall(SYS_getpid));
  g_cached_pid.store(pid, std::memory_order_relaxed);
  return pid;
}

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

// Receives one whole multipart message into `frames`. False when none is
// waiting (with ZMQ_DONTWAIT) or the socket's context is shutting down.
// The frames' strings are reused: a loop receiving batch after batch copies
// into memory it already holds instead of allocating every frame anew.
bool RecvMessage(void* sock, int flags, Frames* frames) {
  size_t n = 0;
  while (true) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, flags) < 0) {
      zmq_msg_close(&msg);
      if (zmq_errno() == EINTR) continue;
      frames->clear();
      return false;  // EAGAIN (first frame only) or ETERM
    }
    const auto* data = static_cast<const char*>(zmq_msg_data(&msg));
    if (n < frames->size()) {
      (*frames)[n].assign(data, zmq_msg_size(&msg));
    } else {
      frames->emplace_back(data, zmq_msg_size(&msg));
    }
    ++n;
    const bool more = zmq_msg_more(&msg);
    zmq_msg_close(&msg);
    if (!more) {
      frames->resize(n);
      return true;
    }
  }
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

// The ZAP handler (ZeroMQ RFC 27): a REP socket at inproc://zeromq.zap.01 in
// this context, answering every CURVE handshake of the context's servers.
struct Context::Zap {
  std::set<std::string> allowed;  // Z85 public keys
  std::atomic<int64_t> refused{0};
  void* sock = nullptr;
  std::thread thread;

  void Serve() {
    Frames req;
    while (true) {
      if (!RecvMessage(sock, 0, &req)) {
        zmq_close(sock);  // ETERM: the context is shutting down
        return;
      }
      // version, request id, domain, address, routing id, mechanism, credentials...
      bool ok = false;
      if (req.size() >= 7 && req[5] == "CURVE" && req[6].size() == 32) {
        char z85[41] = {};
        zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(req[6].data()), 32);
        ok = allowed.count(z85) > 0;
      }
      if (!ok) refused.fetch_add(1, std::memory_order_relaxed);
      const std::string reply[] = {"1.0", req.size() > 1 ? req[1] : std::string(), ok ? "200" : "400",
                                   ok ? "OK" : "client key not allowed", "", ""};
      for (size_t i = 0; i < 6; ++i)
        zmq_send(sock, reply[i].data(), reply[i].size(), i + 1 < 6 ? ZMQ_SNDMORE : 0);
    }
  }
};

Context::Context() : ctx_(zmq_ctx_new()) { zmq_ctx_set(ctx_, ZMQ_MAX_SOCKETS, 65536); }
Context::~Context() {
  if (zap_) {
    zmq_ctx_shutdown(ctx_);  // wakes the handler with ETERM
    zap_->thread.join();
  }
  zmq_ctx_term(ctx_);
}

Status Context::RestrictCurveClients(std::vector<std::string> allowed_public_keys) {
  if (zap_) return FailedPrecondition("the ZAP handler is already running");
  auto zap = std::make_unique<Zap>();
  zap->allowed.insert(allowed_public_keys.begin(), allowed_public_keys.end());
  zap->sock = zmq_socket(ctx_, ZMQ_REP);
  if (!zap->sock) return ZmqError("create ZAP socket");
  int zero = 0;
  zmq_setsockopt(zap->sock, ZMQ_LINGER, &zero, sizeof(zero));
  if (zmq_bind(zap->sock, "inproc://zeromq.zap.01") != 0) {
    Status st = ZmqError("bind ZAP handler");
    zmq_close(zap->sock);
    return st;
  }
  Zap* raw = zap.get();
  zap->thread = std::thread([raw] { raw->Serve(); });
  zap_ = std::move(zap);
  return Status::Ok();
}

int64_t Context::curve_clients_refused() const {
  return zap_ ? zap_->refused.load(std::memory_order_relaxed) : 0;
}

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
  return std::unique_ptr<Socket>(new Socket(ctx.raw(), sock, std::string(buf)));
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
  return std::unique_ptr<Socket>(new Socket(ctx.raw(), sock, endpoint));
}

Socket::~Socket() {
  if (monitor_) {
    zmq_socket_monitor(sock_, nullptr, 0);
    zmq_close(monitor_);
  }
  zmq_close(sock_);
}

Status Socket::WatchHandshakeFailures() {
  if (monitor_) return Status::Ok();
  static std::atomic<uint64_t> next{0};
  std::string addr = "inproc://matrix-monitor-" + std::to_string(next.fetch_add(1));
  int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(sock_, addr.c_str(), events) != 0) return ZmqError("monitor " + endpoint_);
  void* mon = zmq_socket(ctx_, ZMQ_PAIR);
  if (!mon) return ZmqError("create monitor socket");
  int zero = 0;
  zmq_setsockopt(mon, ZMQ_LINGER, &zero, sizeof(zero));
  if (zmq_connect(mon, addr.c_str()) != 0) {
    Status st = ZmqError("connect monitor");
    zmq_close(mon);
    return st;
  }
  monitor_ = mon;
  return Status::Ok();
}

int64_t Socket::TakeHandshakeFailures() {
  if (!monitor_) return 0;
  int64_t failures = 0;
  Frames frames;
  // Each event is two frames: [uint16 event, uint32 value] and the endpoint.
  while (RecvMessage(monitor_, ZMQ_DONTWAIT, &frames))
    if (!frames.empty() && frames[0].size() >= 2) ++failures;
  return failures;
}

namespace {
// Below this size a copy costs less than the allocation that ownership takes.
constexpr size_t kZeroCopyBytes = 16 * 1024;

int FrameFlags(size_t i, size_t count) { return ZMQ_DONTWAIT | (i + 1 < count ? ZMQ_SNDMORE : 0); }

Status SendCopy(void* sock, const std::string& frame, int flags) {
  while (zmq_send(sock, frame.data(), frame.size(), flags) < 0) {
    if (zmq_errno() == EINTR) continue;
    return ZmqError("send");
  }
  return Status::Ok();
}

void DeleteOwnedFrame(void* /*data*/, void* owner) { delete static_cast<std::string*>(owner); }

// ZeroMQ frees the frame (possibly on its I/O thread) once it is written.
Status SendOwned(void* sock, std::string&& frame, int flags) {
  auto* owned = new std::string(std::move(frame));
  zmq_msg_t msg;
  if (zmq_msg_init_data(&msg, owned->data(), owned->size(), DeleteOwnedFrame, owned) != 0) {
    delete owned;
    return ZmqError("send");
  }
  while (zmq_msg_send(&msg, sock, flags) < 0) {
    if (zmq_errno() == EINTR) continue;
    Status st = ZmqError("send");
    zmq_msg_close(&msg);
    return st;
  }
  return Status::Ok();
}
}  // namespace

Status Socket::Send(const Frames& frames) {
  for (size_t i = 0; i < frames.size(); ++i)
    MATRIX_RETURN_IF_ERROR(SendCopy(sock_, frames[i], FrameFlags(i, frames.size())));
  return Status::Ok();
}

Status Socket::Send(Frames&& frames) {
  for (size_t i = 0; i < frames.size(); ++i) {
    const int flags = FrameFlags(i, frames.size());
    MATRIX_RETURN_IF_ERROR(frames[i].size() < kZeroCopyBytes ? SendCopy(sock_, frames[i], flags)
                                                             : SendOwned(sock_, std::move(frames[i]), flags));
  }
  return Status::Ok();
}

bool Socket::TryRecv(Frames* frames) { return RecvMessage(sock_, ZMQ_DONTWAIT, frames); }

bool Socket::HasInput() const {
  int events = 0;
  size_t len = sizeof events;
  return zmq_getsockopt(sock_, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN) != 0;
}

int Socket::fd() const {
  int fd = -1;
  size_t len = sizeof fd;
  return zmq_getsockopt(sock_, ZMQ_FD, &fd, &len) == 0 ? fd : -1;
}

bool Socket::WaitForInput(int timeout_ms) {
  if (HasInput()) return true;
  const Clock* clock = SystemClock::Get();
  auto loop = EventLoop::Create(clock);
  if (!loop.ok()) return false;
  bool ready = false;
  if (!WatchOn(**loop, [&ready] { ready = true; }).ok()) return false;
  const int64_t deadline = clock->NowNanos() + int64_t{timeout_ms} * 1'000'000;
  for (int64_t left = deadline - clock->NowNanos(); !ready && left > 0; left = deadline - clock->NowNanos())
    (*loop)->RunOnce(left);
  return ready || HasInput();
}

Status Socket::WatchOn(EventLoop& loop, std::function<void()> on_input) {
  // ZMQ_FD signals edges of ZeroMQ's internal state, not readable bytes: the
  // loop asks ZMQ_EVENTS before it waits and after each turn.
  const int notify = fd();
  if (notify < 0) return Internal("zmq_getsockopt(ZMQ_FD) on " + endpoint_ + ": " + zmq_strerror(zmq_errno()));
  return loop.WatchEdge(notify, [this] { return HasInput(); }, std::move(on_input));
}

SocketOptions CurveServerOptions(const CurveKeyPair& keys, SocketOptions base) {
  base.curve_server = true;
  base.curve_public_key = keys.public_key;
  base.curve_secret_key = keys.secret_key;
  return base;
}

SocketOptions CurveClientOptions(const CurveKeyPair& keys, SocketOptions base) {
  base.curve_server = false;
  base.curve_server_key = keys.public_key;
  base.curve_public_key = keys.public_key;
  base.curve_secret_key = keys.secret_key;
  return base;
}

StatusOr<CurveKeyPair> GenerateCurveKeyPair() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) return ZmqError("CURVE key generation");
  return CurveKeyPair{pub, sec};
}

}  // namespace matrix::transport
