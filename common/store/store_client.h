// StoreClient: asynchronous client of this node's matrix-store, driven by the
// owner's event loop (a worker runs thousands of tasks on one thread).
//
// Usage, on the owner's EventLoop:
//   for each of client->sockets(): socket->WatchOn(loop, [&] { client->OnReadable(); });
//   each turn: client->Tick(); wait at most client->PollTimeoutMs(max_wait).
//
// Batching: Put/Get/Free calls only queue work. Tick() sends what was queued
// since the previous Tick as one Put, one Get and one Free message (split at
// max_batch items or max_batch_bytes of payload), so a loop iteration costs
// a few messages however many tasks offload or fetch objects in it. A Get of
// an id already queued or in flight waits for that request instead of
// sending another.
//
// Reliability: a request unanswered after request_timeout_ms is sent again
// (same request id; every store operation is idempotent by object id), up to
// max_retries times; then its callbacks get kUnavailable naming the store
// endpoint. Frees are fire-and-forget: a lost Free leaves the object to the
// store's TTL sweep.
//
// Other nodes: with `resolve_node`, a Get of references owned by other nodes
// goes to their stores (a sub-client per node, sockets() lists them all);
// results come back in `refs` order as for local ones. Without it, or for a
// node not yet known, such references fail with kUnavailable.
//
// Integrity: fetched payloads and cache hits are verified against the
// reference's Hash64 checksum and size; a mismatch is kDataLoss naming the
// object, and nothing corrupt is cached.
//
// Callbacks run only from OnReadable() or Tick(), never from inside
// Put/Get/Free. A callback may call Put/Get/Free (the work is sent at the
// next Tick) but must not call OnReadable/Tick or destroy the client.
// Destroying the client drops pending callbacks without running them.
//
// Thread-safety: none; every method on the owner's loop thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/clock.h"
#include "common/base/status.h"
#include "common/store/object_cache.h"
#include "common/transport/transport.h"
#include "common/wire/task.h"

namespace matrix::store {

struct StoreClientOptions {
  int64_t request_timeout_ms = 5000;      // per attempt
  int max_retries = 3;                    // resends after the first attempt
  int64_t cache_bytes = int64_t{128} << 20;  // local LRU cache of payloads; 0: off
  size_t max_batch = 256;                 // items per Put / Get / Free message
  int64_t max_batch_bytes = int64_t{64} << 20;  // payload bytes per Put message
  int64_t max_object_bytes = int64_t{64} << 20;  // larger puts fail locally
  int64_t ttl_ms = 0;                     // TTL sent with puts; 0: store default
  // Many nodes: the store endpoint of another node ("" while unknown). With
  // it, references to other nodes are fetched (and freed) at their owner's
  // store through one more connection per node, opened on first use.
  std::function<std::string(const std::string& node)> resolve_node;
  // Applied to every connection (e.g. CURVE client keys of the job).
  transport::SocketOptions socket_options;
};

// Counts of a store client (and its per-node sub-clients together).
struct ObjectStoreStats {
  int64_t puts = 0;          // Put calls
  int64_t gets = 0;          // Get calls
  int64_t cache_hits = 0;    // references served from the cache
  int64_t cache_misses = 0;  // references fetched from the store
  int64_t frees = 0;         // references freed
  int64_t retries = 0;       // requests sent again after a timeout
  int64_t errors = 0;        // Put/Get callbacks completed with an error
  int64_t remote_refs = 0;   // references owned by other nodes asked for
  int64_t remote_fetches = 0;  // of those, fetched over the network (cache misses)
};

// What the worker needs from the object store: asynchronous Put / Get / Free
// driven by its event loop (see StoreClient's comment for the contract of
// every method). StoreClient talks to matrix-store over ZeroMQ;
// FakeObjectStore (fake_object_store.h) keeps objects in memory, for tests.
class ObjectStore {
 public:
  using PutCallback = std::function<void(StatusOr<wire::ObjectRef>)>;
  using GetCallback = std::function<void(StatusOr<std::vector<std::string>>)>;

  virtual ~ObjectStore() = default;
  // Sockets the owner polls; OnReadable() when any is readable. The list
  // changes when sockets_generation() does.
  virtual std::vector<transport::Socket*> sockets() = 0;
  virtual uint64_t sockets_generation() const = 0;
  virtual void OnReadable() = 0;
  // Once per loop iteration: completions, resends, queued batches.
  virtual void Tick() = 0;
  // How long the owner may block before the next Tick is due (<= max_ms).
  virtual int PollTimeoutMs(int max_ms) const = 0;
  virtual void Put(std::string data, PutCallback done) = 0;
  virtual void Get(std::vector<wire::ObjectRef> refs, GetCallback done) = 0;
  virtual void Free(std::vector<wire::ObjectRef> refs) = 0;
  virtual ObjectStoreStats stats() const = 0;
};

class StoreClient final : public ObjectStore {
 public:
  using Options = StoreClientOptions;
  using StatsCallback = std::function<void(StatusOr<std::string>)>;

  using Stats = ObjectStoreStats;

  // Connects a DEALER to the store at `endpoint` (the connection completes
  // in the background; requests sent before it are queued). `node` is the
  // store's node name, written into every reference this client creates;
  // references to other nodes are refused. `clock` must outlive the client.
  static StatusOr<std::unique_ptr<StoreClient>> Create(transport::Context& ctx,
                                                       const std::string& endpoint, std::string node,
                                                       const Clock* clock, Options opts = {});
  ~StoreClient() override;
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  // The owner watches this socket (Socket::WatchOn) and calls OnReadable()
  // when a message waits.
  transport::Socket* socket() { return socket_.get(); }
  // This node's socket first, then one per other node in use. The list grows
  // when a new node is first used: watch the new ones when
  // sockets_generation() changes. OnReadable() drains all of them.
  std::vector<transport::Socket*> sockets() override;
  uint64_t sockets_generation() const override { return remotes_.size(); }
  // Drains every queued reply and runs the callbacks it completes.
  void OnReadable() override;
  // Runs completions ready since the last call (cache hits, local errors),
  // resends or fails timed-out requests, and sends the queued batches.
  // Call once per loop iteration.
  void Tick() override;
  // How long the owner may block in Poll before the next Tick is due:
  // 0 when work is queued, else the time to the earliest request deadline,
  // at most max_ms.
  int PollTimeoutMs(int max_ms) const override;

  // Stores `data` under a fresh random 64-bit id; done gets the reference
  // {node, id, size, Hash64 checksum}, or the store's error for this object
  // (kInvalidArgument above max_object_bytes, kResourceExhausted when the
  // store is full, kUnavailable after the retries). The data also enters the
  // local cache once stored.
  void Put(std::string data, PutCallback done) override;
  // Fetches the objects, from the cache when possible; done gets their bytes
  // in `refs` order, or the first error, naming the object (kNotFound,
  // kDataLoss, kUnavailable for a reference to another node or an
  // unreachable store).
  void Get(std::vector<wire::ObjectRef> refs, GetCallback done) override;
  // Releases the objects in the store (batched, no reply) and drops them
  // from the cache. References to other nodes are ignored.
  void Free(std::vector<wire::ObjectRef> refs) override;
  // The store's StatsReply JSON (counters of matrix-store).
  void FetchStoreStats(StatsCallback done);

  // Counts of this client and its per-node sub-clients together.
  Stats stats() const override;
  const std::string& endpoint() const { return endpoint_; }
  const std::string& node() const { return node_; }
  // Requests sent and not yet answered.
  size_t in_flight() const { return inflight_.size(); }

 private:
  struct PutOp {
    uint64_t id = 0;
    uint64_t checksum = 0;
    std::string data;
    PutCallback done;
  };
  struct GetOp {
    std::vector<wire::ObjectRef> refs;
    std::vector<std::string> results;
    size_t remaining = 0;
    bool finished = false;
    GetCallback done;
  };
  struct Waiter {
    std::shared_ptr<GetOp> op;
    size_t index = 0;
  };
  enum class Kind { kPut, kGet, kStats };
  struct Request {
    Kind kind = Kind::kPut;
    int attempts = 0;
    int64_t deadline_ms = 0;
    std::vector<PutOp> puts;    // kPut, in item order
    std::vector<uint64_t> ids;  // kGet, in item order
    StatsCallback stats_done;   // kStats
  };

  StoreClient(std::string endpoint, std::string node, const Clock* clock, Options opts,
              std::unique_ptr<transport::Socket> socket);
  // The sub-client of another node's store; null while its endpoint is unknown.
  StoreClient* Remote(const std::string& node);
  void GetLocal(std::vector<wire::ObjectRef> refs, GetCallback done);
  uint64_t NewObjectId();
  void Send(uint64_t request_id, Request& request);
  void FlushPuts();
  void FlushGets();
  void FlushFrees();
  void ExpireRequests();
  void FlushStats();
  void HandleReply(transport::Frames& frames);
  // Completes every Get waiting for `id` with `data` (verified against each
  // waiter's reference) or, when data is null, with `error`.
  void Deliver(uint64_t id, const std::string* data, const Status& error);
  void Fail(Request& request, const Status& error);
  void FinishGet(GetOp& op, StatusOr<std::vector<std::string>> result);
  void WarnBadReply(const std::string& why);

  const std::string endpoint_;
  const std::string node_;
  const Clock* clock_;
  const Options opts_;
  std::unique_ptr<transport::Socket> socket_;
  ObjectCache cache_;
  std::mt19937_64 rng_;
  uint64_t next_request_id_ = 1;
  int64_t last_warning_ms_ = INT64_MIN / 2;
  Stats stats_;

  // Invariants:
  //   Every id in pending_gets_ or in an in-flight kGet request has an entry
  //   in get_waiters_, and appears in exactly one of them.
  //   A GetOp is finished exactly once; remaining counts its refs not yet
  //   filled.
  std::vector<PutOp> pending_puts_;
  std::vector<uint64_t> pending_gets_;
  std::vector<uint64_t> pending_frees_;
  std::vector<StatsCallback> pending_stats_;
  std::unordered_map<uint64_t, std::vector<Waiter>> get_waiters_;
  std::unordered_map<uint64_t, Request> inflight_;
  std::deque<uint64_t> inflight_stats_;  // StatsReply carries no request id: FIFO
  std::vector<std::function<void()>> ready_;
  transport::Context* ctx_ = nullptr;
  std::map<std::string, std::unique_ptr<StoreClient>> remotes_;  // node -> sub-client
};

}  // namespace matrix::store
