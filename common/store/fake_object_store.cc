#include "common/store/fake_object_store.h"

#include "common/base/hash.h"

namespace matrix::store {

void FakeObjectStore::Tick() {
  std::deque<std::function<void()>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    due.swap(due_);
  }
  // Callbacks may queue more work: it runs at the next Tick, as in StoreClient.
  for (auto& f : due) f();
}

int FakeObjectStore::PollTimeoutMs(int max_ms) const {
  std::lock_guard<std::mutex> lock(mu_);
  return due_.empty() ? max_ms : 0;
}

void FakeObjectStore::Put(std::string data, PutCallback done) {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.puts;
  wire::ObjectRef ref{node_, next_id_++, data.size(), Hash64(data)};
  objects_[ref.id] = std::move(data);
  due_.push_back([ref, done = std::move(done)] { done(ref); });
}

void FakeObjectStore::Get(std::vector<wire::ObjectRef> refs, GetCallback done) {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.gets;
  std::vector<std::string> out;
  Status error;
  for (const auto& ref : refs) {
    auto it = objects_.find(ref.id);
    if (ref.node != node_) {
      error = Unavailable("object " + std::to_string(ref.id) + " belongs to node " + ref.node);
    } else if (it == objects_.end()) {
      ++stats_.cache_misses;
      error = NotFound("object " + std::to_string(ref.id) + " not found");
    } else if (it->second.size() != ref.size || Hash64(it->second) != ref.checksum) {
      error = DataLoss("object " + std::to_string(ref.id) + " does not match its reference");
    } else {
      ++stats_.cache_hits;
      out.push_back(it->second);
      continue;
    }
    break;
  }
  if (!error.ok()) ++stats_.errors;
  due_.push_back([error, out = std::move(out), done = std::move(done)]() mutable {
    if (!error.ok()) return done(error);
    done(std::move(out));
  });
}

void FakeObjectStore::Free(std::vector<wire::ObjectRef> refs) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& ref : refs) {
    if (ref.node != node_) continue;
    ++stats_.frees;
    objects_.erase(ref.id);
  }
}

ObjectStoreStats FakeObjectStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

size_t FakeObjectStore::objects() const {
  std::lock_guard<std::mutex> lock(mu_);
  return objects_.size();
}

int64_t FakeObjectStore::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  for (const auto& [id, data] : objects_) n += static_cast<int64_t>(data.size());
  return n;
}

void FakeObjectStore::Forget() {
  std::lock_guard<std::mutex> lock(mu_);
  objects_.clear();
}

}  // namespace matrix::store
