// SegmentCache: archived history segments, decoded, by object id; the least
// recently used go first beyond a byte budget (the memory a decoded segment
// takes, Footprint()).
// Stored objects never change, so an entry never goes stale; a finished
// task's segments are erased. A worker keeps the segments it archived and
// read, so a task's next step reads its history without the store, zstd or
// decoding.
// Thread-safety: the worker's loop thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
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

  void Put(uint64_t id, wire::Task segment) {
    Erase(id);
    const size_t bytes = Footprint(segment);
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

  // What a decoded segment takes in memory: its vectors' storage and every
  // string's heap block (short strings live inside their object), plus the
  // cache's own bookkeeping.
  static size_t Footprint(const wire::Task& t) {
    auto heap = [](const std::string& s) { return s.capacity() > 15 ? s.capacity() + 1 : 0; };
    size_t n = sizeof(Entry) + 64 + t.history.capacity() * sizeof(wire::Turn) +
               t.spans.capacity() * sizeof(wire::Span) + t.archive.capacity() * sizeof(wire::ObjectRef);
    for (const auto& turn : t.history) {
      n += heap(turn.step) + heap(turn.role) + heap(turn.kind) + heap(turn.content.text) + heap(turn.tool_call_id) +
           heap(turn.finish_reason) + heap(turn.endpoint) + heap(turn.model) + heap(turn.extra) +
           turn.tool_calls.capacity() * sizeof(wire::ToolCall);
      for (const auto& c : turn.tool_calls) n += heap(c.id) + heap(c.name) + heap(c.arguments);
    }
    for (const auto& span : t.spans) n += heap(span.step) + heap(span.role) + heap(span.worker) + heap(span.endpoint);
    return n;
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
