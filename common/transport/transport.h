// Transport: the only place that includes ZeroMQ. Daemons see sockets as
// sequences of byte frames (std::string) and a poller over sockets and plain
// file descriptors (eventfds from other threads, signal fds).
//
// Socket kinds used by the product:
//   Router  - servers (broker, store). Received messages start with the peer
//             identity frame; sends to unknown peers fail (ROUTER_MANDATORY).
//   Dealer  - clients (workers, CLI). Asynchronous request/reply.
// Every socket has LINGER=0, a maximum message size, and large HWMs (credit
// flow control, not HWMs, bounds the work in flight).
//
// Thread-safety: a Socket belongs to the thread that polls it. Context is
// thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/base/event_loop.h"
#include "common/base/status.h"

namespace matrix::transport {

using Frames = std::vector<std::string>;

struct SocketOptions {
  int64_t max_message_bytes = 64 << 20;  // larger messages are dropped by ZeroMQ
  int send_hwm = 1'000'000;
  int recv_hwm = 1'000'000;
  std::string identity;  // Dealer identity; empty = assigned by ZeroMQ
  // CURVE (Z85 keys, 40 chars). A Router with curve_server=true requires
  // clients that know its public key; a Dealer sets curve_server_key.
  bool curve_server = false;
  std::string curve_public_key;
  std::string curve_secret_key;
  std::string curve_server_key;
};

class Context {
 public:
  Context();
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void* raw() const { return ctx_; }

  // Starts this context's ZAP handler: from then on its CURVE servers accept
  // only clients presenting one of `allowed_public_keys` (Z85). Call once,
  // before binding. Without it any client knowing the server key is let in.
  Status RestrictCurveClients(std::vector<std::string> allowed_public_keys);
  // Clients refused by the ZAP handler so far.
  int64_t curve_clients_refused() const;

 private:
  struct Zap;
  void* ctx_;
  std::unique_ptr<Zap> zap_;
};

class Socket {
 public:
  enum class Kind { kRouter, kDealer, kPair };

  // Binds (servers) or connects (clients). For "tcp://host:*" or port 0 the
  // actual endpoint is available from endpoint().
  static StatusOr<std::unique_ptr<Socket>> Bind(Context& ctx, Kind kind, const std::string& endpoint,
                                                const SocketOptions& options = {});
  static StatusOr<std::unique_ptr<Socket>> Connect(Context& ctx, Kind kind,
                                                   const std::string& endpoint,
                                                   const SocketOptions& options = {});
  ~Socket();

  // Sends all frames as one multipart message. kUnavailable when the peer is
  // unknown (Router) or the queue is full (non-blocking).
  Status Send(const Frames& frames);
  // The same, taking the frames over: a large frame (a batch of tasks or
  // objects) is handed to ZeroMQ as it is instead of being copied.
  Status Send(Frames&& frames);
  // Receives one whole multipart message without blocking; false when none.
  bool TryRecv(Frames* frames);
  const std::string& endpoint() const { return endpoint_; }
  void* raw() const { return sock_; }
  // Whether a message waits to be received (ZMQ_EVENTS); never blocks.
  bool HasInput() const;
  // Runs `on_input` on `loop` whenever a message waits, until the socket is
  // unwatched (loop.Unwatch(socket.fd())) or destroyed. `on_input` receives
  // with TryRecv() and may leave messages for the next turn.
  Status WatchOn(EventLoop& loop, std::function<void()> on_input);
  // ZeroMQ's notification fd (ZMQ_FD): readable only as a hint, see WatchOn.
  int fd() const;
  // Blocks until a message waits (true) or `timeout_ms` passes (false), on
  // an EventLoop of its own: for one-shot clients (the CLI) and tests.
  bool WaitForInput(int timeout_ms);

  // Servers: watch this socket's failed handshakes (a peer without CURVE,
  // with the wrong server key, or refused by the ZAP handler).
  Status WatchHandshakeFailures();
  // Failed handshakes since the last call; never blocks. 0 when not watching.
  int64_t TakeHandshakeFailures();

 private:
  Socket(void* ctx, void* sock, std::string endpoint) : ctx_(ctx), sock_(sock), endpoint_(std::move(endpoint)) {}
  void* ctx_;
  void* sock_;
  void* monitor_ = nullptr;
  std::string endpoint_;
};

// Z85-encoded CURVE key pair.
struct CurveKeyPair {
  std::string public_key;
  std::string secret_key;
};
StatusOr<CurveKeyPair> GenerateCurveKeyPair();

// Options for a CURVE server (secret key of `keys`) and for a CURVE client
// of such a server that authenticates with the same pair: a job's daemons
// share one key pair, created by the job script (see job_keys.h).
SocketOptions CurveServerOptions(const CurveKeyPair& keys, SocketOptions base = {});
SocketOptions CurveClientOptions(const CurveKeyPair& keys, SocketOptions base = {});

}  // namespace matrix::transport
