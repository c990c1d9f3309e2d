// FakeObjectStore: an ObjectStore that keeps objects in memory and completes
// every call at the next Tick(), as StoreClient does, so the owner's loop
// runs as it does against matrix-store. For component tests of the worker.
//
// Forget() drops every object, as a store restarted without its disk would:
// later Gets of them fail with kNotFound.
//
// Thread-safety: the ObjectStore methods on the owner's loop thread; the
// inspection methods and Forget() from any thread.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/store/store_client.h"

namespace matrix::store {

class FakeObjectStore final : public ObjectStore {
 public:
  explicit FakeObjectStore(std::string node = "local") : node_(std::move(node)) {}

  std::vector<transport::Socket*> sockets() override { return {}; }
  uint64_t sockets_generation() const override { return 0; }
  void OnReadable() override {}
  void Tick() override;
  int PollTimeoutMs(int max_ms) const override;
  void Put(std::string data, PutCallback done) override;
  void Get(std::vector<wire::ObjectRef> refs, GetCallback done) override;
  void Free(std::vector<wire::ObjectRef> refs) override;
  ObjectStoreStats stats() const override;

  size_t objects() const;
  int64_t bytes() const;
  void Forget();

 private:
  std::string node_;
  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::string> objects_;
  std::deque<std::function<void()>> due_;  // completions for the next Tick
  ObjectStoreStats stats_;
};

}  // namespace matrix::store
