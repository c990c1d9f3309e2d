// SegmentCache: archived history segments, decoded, by object id; the least
// recently used go first beyond a byte budget (counted in encoded bytes).
// Stored objects never change, so an entry never goes stale; a finished
// task's segments are erased. A worker keeps the segments it archived and
// read, so a task's next step reads its history without the store, zstd or
// decoding.
// Thread-safety: the worker's loop thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>

#include "common/wire/task.h"

namespace matrix::worker {

class SegmentCache {
 public:
  explicit SegmentCache(size_t budget_bytes) : budget_(budget_bytes) {}

  // The segment, now the most recently used; nullptr when not held.
  const wire::Task* Find(uint64_t id) {
    auto it = index_.find(id);
    if (it == index_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second);
    return &it->second->segment;
  }

  void Put(uint64_t id, wire::Task segment, size_t bytes) {
    Erase(id);
    if (bytes > budget_) return;
    lru_.push_front(Entry{id, std::move(segment), bytes});
    index_[id] = lru_.begin();
    bytes_ += bytes;
    while (bytes_ > budget_) Erase(lru_.back().id);
  }

  void Erase(uint64_t id) {
    auto it = index_.find(id);
    if (it == index_.end()) return;
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }

  size_t bytes() const { return bytes_; }
  size_t size() const { return index_.size(); }

 private:
  struct Entry {
    uint64_t id;
    wire::Task segment;
    size_t bytes;
  };
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<uint64_t, std::list<Entry>::iterator> index_;
  size_t budget_;
  size_t bytes_ = 0;
};

}  // namespace matrix::worker
