// StoreClient: batched, retried, cache-backed requests to matrix-store over
// one DEALER socket. Single-threaded (the owner's loop).
#include "common/store/store_client.h"

#include <algorithm>
#include <utility>
#include <variant>

#include "common/base/hash.h"
#include "common/base/log.h"
#include "common/wire/codec.h"
#include "common/wire/control.h"

namespace matrix::store {
namespace {

constexpr size_t kMaxEnvelopeBytes = 4 << 20;

std::string ObjectName(uint64_t id) { return "object " + Hex64(id); }

// The store reports a failed item as Status::ToString() ("NOT_FOUND: ...");
// the canonical code comes back from the text before the first ": ".
Status StatusFromItem(const wire::ObjectItem& item) {
  const std::string& text = item.error;
  if (size_t colon = text.find(": "); colon != std::string::npos) {
    const std::string name = text.substr(0, colon);
    for (int c = static_cast<int>(StatusCode::kCancelled); c <= static_cast<int>(StatusCode::kDataLoss); ++c) {
      if (name == StatusCodeName(static_cast<StatusCode>(c)))
        return Status(static_cast<StatusCode>(c), text.substr(colon + 2));
    }
  }
  return Internal(ObjectName(item.id) + ": store error: " + (text.empty() ? "no reason given" : text));
}

}  // namespace

StatusOr<std::unique_ptr<StoreClient>> StoreClient::Create(transport::Context& ctx,
                                                           const std::string& endpoint,
                                                           std::string node, const Clock* clock,
                                                           Options opts) {
  if (opts.request_timeout_ms <= 0 || opts.max_retries < 0 || opts.max_batch == 0 ||
      opts.max_batch_bytes <= 0 || opts.max_object_bytes <= 0 || opts.cache_bytes < 0)
    return InvalidArgument("store client options: timeouts, batch sizes and limits must be positive");
  transport::SocketOptions so = opts.socket_options;
  so.max_message_bytes = std::max<int64_t>(opts.max_object_bytes, kMaxEnvelopeBytes) + 4096;
  auto socket = transport::Socket::Connect(ctx, transport::Socket::Kind::kDealer, endpoint, so);
  if (!socket.ok()) return socket.status();
  std::unique_ptr<StoreClient> client(
      new StoreClient(endpoint, std::move(node), clock, opts, std::move(socket).value()));
  client->ctx_ = &ctx;
  return client;
}

StoreClient* StoreClient::Remote(const std::string& node) {
  auto it = remotes_.find(node);
  if (it != remotes_.end()) return it->second.get();
  if (!opts_.resolve_node) return nullptr;
  const std::string endpoint = opts_.resolve_node(node);
  if (endpoint.empty()) return nullptr;
  Options sub = opts_;
  sub.resolve_node = nullptr;
  sub.cache_bytes = opts_.cache_bytes / 4;
  auto client = Create(*ctx_, endpoint, node, clock_, sub);
  if (!client.ok()) {
    LOG_WARN << "cannot connect to the store of node " << node << " at " << endpoint << ": "
             << client.status().message();
    return nullptr;
  }
  LOG_INFO << "fetching objects of node " << node << " from " << endpoint;
  return remotes_.emplace(node, std::move(*client)).first->second.get();
}

std::vector<transport::Socket*> StoreClient::sockets() {
  std::vector<transport::Socket*> out{socket_.get()};
  for (auto& [node, client] : remotes_) out.push_back(client->socket());
  return out;
}

StoreClient::Stats StoreClient::stats() const {
  Stats s = stats_;
  for (const auto& [node, c] : remotes_) {
    const Stats r = c->stats();
    s.cache_hits += r.cache_hits;
    s.cache_misses += r.cache_misses;
    s.retries += r.retries;
    s.errors += r.errors;
    s.remote_fetches += r.cache_misses;
  }
  return s;
}

StoreClient::StoreClient(std::string endpoint, std::string node, const Clock* clock, Options opts,
                         std::unique_ptr<transport::Socket> socket)
    : endpoint_(std::move(endpoint)),
      node_(std::move(node)),
      clock_(clock),
      opts_(opts),
      socket_(std::move(socket)),
      cache_(opts.cache_bytes) {
  std::random_device rd;
  std::seed_seq seq{rd(), rd(), rd(), rd(), static_cast<unsigned>(reinterpret_cast<uintptr_t>(this))};
  rng_.seed(seq);
}

StoreClient::~StoreClient() = default;

uint64_t StoreClient::NewObjectId() {
  uint64_t id = 0;
  while (id == 0) id = rng_();
  return id;
}

void StoreClient::Put(std::string data, PutCallback done) {
  ++stats_.puts;
  if (data.size() > static_cast<uint64_t>(opts_.max_object_bytes)) {
    ++stats_.errors;
    Status st = InvalidArgument("object of " + std::to_string(data.size()) +
                                " bytes is above the store limit of " +
                                std::to_string(opts_.max_object_bytes));
    ready_.push_back([done = std::move(done), st] { done(st); });
    return;
  }
  PutOp op;
  op.id = NewObjectId();
  op.checksum = Hash64(data);
  op.data = std::move(data);
  op.done = std::move(done);
  pending_puts_.push_back(std::move(op));
}

void StoreClient::Get(std::vector<wire::ObjectRef> refs, GetCallback done) {
  bool all_local = true;
  for (const auto& ref : refs) all_local &= ref.node == node_;
  if (all_local || !opts_.resolve_node) return GetLocal(std::move(refs), std::move(done));
  ++stats_.gets;
  // Split by owning node; the parts complete into one result in refs order.
  struct Join {
    std::vector<std::string> results;
    size_t parts = 0;
    bool failed = false;
    GetCallback done;
  };
  auto join = std::make_shared<Join>();
  join->results.resize(refs.size());
  join->done = std::move(done);
  std::map<std::string, std::vector<size_t>> by_node;
  for (size_t i = 0; i < refs.size(); ++i) by_node[refs[i].node].push_back(i);
  join->parts = by_node.size();
  for (auto& [node, idx] : by_node) {
    std::vector<wire::ObjectRef> part;
    for (size_t i : idx) part.push_back(refs[i]);
    auto finish = [this, join, idx](StatusOr<std::vector<std::string>> got) {
      if (join->failed) return;
      if (!got.ok()) {
        join->failed = true;
        join->done(got.status());
        return;
      }
      for (size_t k = 0; k < idx.size(); ++k) join->results[idx[k]] = std::move((*got)[k]);
      if (--join->parts == 0) join->done(std::move(join->results));
    };
    if (node == node_) {
      GetLocal(std::move(part), std::move(finish));
      --stats_.gets;  // counted once above
      continue;
    }
    stats_.remote_refs += static_cast<int64_t>(part.size());
    if (StoreClient* remote = Remote(node)) {
      remote->Get(std::move(part), std::move(finish));
    } else {
      Status st = Unavailable("object on node " + node + " not reachable (" + ObjectName(part[0].id) +
                              "; no store endpoint known for that node)");
      ++stats_.errors;
      ready_.push_back([finish, st]() mutable { finish(st); });
    }
  }
}

void StoreClient::GetLocal(std::vector<wire::ObjectRef> refs, GetCallback done) {
  ++stats_.gets;
  auto op = std::make_shared<GetOp>();
  op->done = std::move(done);
  for (const auto& ref : refs) {
    if (ref.node != node_) {
      ++stats_.errors;
      Status st = Unavailable("object on node " + ref.node + " not reachable (" + ObjectName(ref.id) +
                              "; this store serves node " + node_ + ")");
      op->finished = true;
      ready_.push_back([done = std::move(op->done), st] { done(st); });
      return;
    }
  }
  op->refs = std::move(refs);
  op->results.resize(op->refs.size());
  for (size_t i = 0; i < op->refs.size(); ++i) {
    const wire::ObjectRef& ref = op->refs[i];
    auto cached = cache_.Get(ref.id, ref.checksum);
    if (cached && cached->size() == ref.size) {
      ++stats_.cache_hits;
      op->results[i] = std::move(*cached);
      continue;
    }
    ++stats_.cache_misses;
    ++op->remaining;
    auto& waiters = get_waiters_[ref.id];
    if (waiters.empty()) pending_gets_.push_back(ref.id);
    waiters.push_back({op, i});
  }
  if (op->remaining == 0) ready_.push_back([this, op] { FinishGet(*op, std::move(op->results)); });
}

void StoreClient::Free(std::vector<wire::ObjectRef> refs) {
  std::map<std::string, std::vector<wire::ObjectRef>> others;
  for (const auto& ref : refs) {
    if (ref.node != node_) {
      if (opts_.resolve_node) others[ref.node].push_back(ref);
      continue;
    }
    cache_.Erase(ref.id);
    pending_frees_.push_back(ref.id);
    ++stats_.frees;
  }
  for (auto& [node, part] : others) {
    stats_.frees += static_cast<int64_t>(part.size());
    if (StoreClient* remote = Remote(node)) remote->Free(std::move(part));
  }
}

void StoreClient::FetchStoreStats(StatsCallback done) { pending_stats_.push_back(std::move(done)); }

void StoreClient::Tick() {
  ExpireRequests();
  // Completions queued before this Tick; the ones they queue run next Tick.
  std::vector<std::function<void()>> ready;
  ready.swap(ready_);
  for (auto& complete : ready) complete();
  FlushPuts();
  FlushGets();
  FlushFrees();
  FlushStats();
  for (auto& [node, remote] : remotes_) remote->Tick();
}

int StoreClient::PollTimeoutMs(int max_ms) const {
  if (!ready_.empty() || !pending_puts_.empty() || !pending_gets_.empty() || !pending_frees_.empty() ||
      !pending_stats_.empty())
    return 0;
  int64_t wait = max_ms < 0 ? INT64_MAX : max_ms;
  const int64_t now = clock_->NowMillis();
  for (const auto& [rid, r] : inflight_) wait = std::min(wait, std::max<int64_t>(0, r.deadline_ms - now));
  for (const auto& [node, remote] : remotes_) {
    const int w = remote->PollTimeoutMs(max_ms);
    if (w >= 0) wait = std::min<int64_t>(wait, w);
  }
  return wait == INT64_MAX ? -1 : static_cast<int>(wait);
}

void StoreClient::Send(uint64_t request_id, Request& request) {
  ++request.attempts;
  request.deadline_ms = clock_->NowMillis() + opts_.request_timeout_ms;
  transport::Frames frames;
  const std::string sender = "client@" + node_;
  switch (request.kind) {
    case Kind::kPut: {
      wire::PutMsg msg{request_id, {}};
      msg.items.reserve(request.puts.size());
      frames.reserve(request.puts.size() + 1);
      frames.emplace_back();
      for (const PutOp& op : request.puts) {
        msg.items.push_back({op.id, op.data.size(), op.checksum, static_cast<uint64_t>(opts_.ttl_ms), true, ""});
        frames.push_back(op.data);
      }
      frames[0] = wire::EncodeControl({sender, std::move(msg)});
      break;
    }
    case Kind::kGet:
      frames.push_back(wire::EncodeControl({sender, wire::GetMsg{request_id, request.ids}}));
      break;
    case Kind::kStats:
      frames.push_back(wire::EncodeControl({sender, wire::StatsRequestMsg{}}));
      break;
  }
  // A failed send (queue full) is covered by the timeout and retry.
  Status st = socket_->Send(frames);
  if (!st.ok()) {
    LOG_DEBUG << "request to store " << endpoint_ << " not sent: " << st.message();
  }
}

void StoreClient::FlushPuts() {
  size_t i = 0;
  while (i < pending_puts_.size()) {
    Request r;
    r.kind = Kind::kPut;
    int64_t bytes = 0;
    while (i < pending_puts_.size() && r.puts.size() < opts_.max_batch &&
           (r.puts.empty() ||
            bytes + static_cast<int64_t>(pending_puts_[i].data.size()) <= opts_.max_batch_bytes)) {
      bytes += static_cast<int64_t>(pending_puts_[i].data.size());
      r.puts.push_back(std::move(pending_puts_[i++]));
    }
    const uint64_t rid = next_request_id_++;
    Send(rid, inflight_[rid] = std::move(r));
  }
  pending_puts_.clear();
}

void StoreClient::FlushGets() {
  for (size_t i = 0; i < pending_gets_.size(); i += opts_.max_batch) {
    Request r;
    r.kind = Kind::kGet;
    size_t end = std::min(pending_gets_.size(), i + opts_.max_batch);
    r.ids.assign(pending_gets_.begin() + i, pending_gets_.begin() + end);
    const uint64_t rid = next_request_id_++;
    Send(rid, inflight_[rid] = std::move(r));
  }
  pending_gets_.clear();
}

void StoreClient::FlushFrees() {
  for (size_t i = 0; i < pending_frees_.size(); i += opts_.max_batch) {
    size_t end = std::min(pending_frees_.size(), i + opts_.max_batch);
    wire::FreeMsg msg{{pending_frees_.begin() + i, pending_frees_.begin() + end}};
    Status st = socket_->Send({wire::EncodeControl({"client@" + node_, std::move(msg)})});
    if (!st.ok()) {
      LOG_DEBUG << "free to store " << endpoint_ << " not sent: " << st.message();
    }
  }
  pending_frees_.clear();
}

void StoreClient::FlushStats() {
  for (auto& done : pending_stats_) {
    Request r;
    r.kind = Kind::kStats;
    r.stats_done = std::move(done);
    const uint64_t rid = next_request_id_++;
    inflight_stats_.push_back(rid);
    Send(rid, inflight_[rid] = std::move(r));
  }
  pending_stats_.clear();
}

void StoreClient::ExpireRequests() {
  const int64_t now = clock_->NowMillis();
  std::vector<uint64_t> expired;
  for (const auto& [rid, r] : inflight_)
    if (r.deadline_ms <= now) expired.push_back(rid);
  std::sort(expired.begin(), expired.end());
  for (uint64_t rid : expired) {
    auto it = inflight_.find(rid);
    if (it == inflight_.end()) continue;
    if (it->second.attempts <= opts_.max_retries) {
      ++stats_.retries;
      LOG_DEBUG << "store " << endpoint_ << " did not answer request " << rid << " in "
                << opts_.request_timeout_ms << " ms; sending it again";
      Send(rid, it->second);
      continue;
    }
    Request dead = std::move(it->second);
    inflight_.erase(it);
    if (dead.kind == Kind::kStats)
      inflight_stats_.erase(std::remove(inflight_stats_.begin(), inflight_stats_.end(), rid),
                            inflight_stats_.end());
    Fail(dead, Unavailable("store " + endpoint_ + " did not answer after " +
                           std::to_string(dead.attempts) + " attempts of " +
                           std::to_string(opts_.request_timeout_ms) + " ms"));
  }
}

void StoreClient::Fail(Request& request, const Status& error) {
  switch (request.kind) {
    case Kind::kPut:
      for (PutOp& op : request.puts) {
        ++stats_.errors;
        op.done(error);
      }
      break;
    case Kind::kGet:
      for (uint64_t id : request.ids)
        Deliver(id, nullptr, Status(error.code(), ObjectName(id) + ": " + error.message()));
      break;
    case Kind::kStats:
      request.stats_done(error);
      break;
  }
}

void StoreClient::OnReadable() {
  transport::Frames frames;
  while (socket_->TryRecv(&frames)) HandleReply(frames);
  for (auto& [node, remote] : remotes_) remote->OnReadable();
}

void StoreClient::WarnBadReply(const std::string& why) {
  const int64_t now = clock_->NowMillis();
  if (now - last_warning_ms_ < 1000) return;
  last_warning_ms_ = now;
  LOG_WARN << "ignored reply from store " << endpoint_ << ": " << why;
}

void StoreClient::HandleReply(transport::Frames& frames) {
  if (frames.empty()) return;
  auto control = wire::DecodeControl(frames[0], kMaxEnvelopeBytes);
  if (!control.ok()) {
    WarnBadReply(control.status().message());
    return;
  }

  if (auto* reply = std::get_if<wire::PutReplyMsg>(&control->body)) {
    auto it = inflight_.find(reply->request_id);
    if (it == inflight_.end() || it->second.kind != Kind::kPut) return;  // answered already
    const std::vector<PutOp>& ops = it->second.puts;
    bool consistent = frames.size() == 1 && reply->items.size() == ops.size();
    for (size_t i = 0; consistent && i < ops.size(); ++i) consistent = reply->items[i].id == ops[i].id;
    if (!consistent) {
      WarnBadReply("PutReply does not match request " + std::to_string(reply->request_id));
      return;  // the request times out and is sent again
    }
    Request req = std::move(it->second);
    inflight_.erase(it);
    for (size_t i = 0; i < req.puts.size(); ++i) {
      PutOp& op = req.puts[i];
      const wire::ObjectItem& item = reply->items[i];
      if (!item.ok) {
        ++stats_.errors;
        op.done(StatusFromItem(item));
        continue;
      }
      wire::ObjectRef ref{node_, op.id, op.data.size(), op.checksum};
      cache_.Put(op.id, op.checksum, std::move(op.data));
      op.done(std::move(ref));
    }
    return;
  }

  if (auto* reply = std::get_if<wire::GetReplyMsg>(&control->body)) {
    auto it = inflight_.find(reply->request_id);
    if (it == inflight_.end() || it->second.kind != Kind::kGet) return;
    const std::vector<uint64_t>& ids = it->second.ids;
    bool consistent = frames.size() == 1 + ids.size() && reply->items.size() == ids.size();
    for (size_t i = 0; consistent && i < ids.size(); ++i) consistent = reply->items[i].id == ids[i];
    if (!consistent) {
      WarnBadReply("GetReply does not match request " + std::to_string(reply->request_id));
      return;
    }
    Request req = std::move(it->second);
    inflight_.erase(it);
    for (size_t i = 0; i < req.ids.size(); ++i) {
      const wire::ObjectItem& item = reply->items[i];
      if (item.ok)
        Deliver(req.ids[i], &frames[1 + i], Status::Ok());
      else
        Deliver(req.ids[i], nullptr, StatusFromItem(item));
    }
    return;
  }

  if (auto* reply = std::get_if<wire::StatsReplyMsg>(&control->body)) {
    if (inflight_stats_.empty()) return;
    auto it = inflight_.find(inflight_stats_.front());
    inflight_stats_.pop_front();
    if (it == inflight_.end()) return;
    Request req = std::move(it->second);
    inflight_.erase(it);
    req.stats_done(std::move(reply->json));
    return;
  }

  WarnBadReply("unexpected message type " + std::to_string(control->body.index()));
}

void StoreClient::Deliver(uint64_t id, const std::string* data, const Status& error) {
  auto it = get_waiters_.find(id);
  if (it == get_waiters_.end()) return;
  std::vector<Waiter> waiters = std::move(it->second);
  get_waiters_.erase(it);
  const uint64_t hash = data ? Hash64(*data) : 0;
  bool cached = false;
  for (Waiter& w : waiters) {
    GetOp& op = *w.op;
    if (op.finished) continue;
    if (!data) {
      FinishGet(op, error);
      continue;
    }
    const wire::ObjectRef& ref = op.refs[w.index];
    if (hash != ref.checksum || data->size() != ref.size) {
      FinishGet(op, DataLoss(ObjectName(id) + " from store " + endpoint_ + " failed its checksum: " +
                             std::to_string(data->size()) + " bytes hashing to " + Hex64(hash) +
                             ", reference says " + std::to_string(ref.size) + " bytes, " +
                             Hex64(ref.checksum)));
      continue;
    }
    if (!cached) {
      // Cached before the callbacks run, so a Get they issue is a hit.
      cache_.Put(id, hash, *data);
      cached = true;
    }
    op.results[w.index] = *data;
    if (--op.remaining == 0) FinishGet(op, std::move(op.results));
  }
}

void StoreClient::FinishGet(GetOp& op, StatusOr<std::vector<std::string>> result) {
  if (op.finished) return;
  op.finished = true;
  if (!result.ok()) ++stats_.errors;
  GetCallback done = std::move(op.done);
  done(std::move(result));
}

}  // namespace matrix::store
