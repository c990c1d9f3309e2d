// ObjectCache: byte-bounded LRU of verified object payloads.
#include "common/store/object_cache.h"

#include "common/base/hash.h"

namespace matrix::store {

void ObjectCache::Put(uint64_t id, uint64_t checksum, std::string data) {
  if (auto it = entries_.find(id); it != entries_.end()) Evict(it);
  const int64_t size = static_cast<int64_t>(data.size());
  if (size > capacity_bytes_) return;
  while (bytes_ + size > capacity_bytes_ && !lru_.empty()) Evict(entries_.find(lru_.back()));
  lru_.push_front(id);
  Entry& e = entries_[id];
  e.checksum = checksum;
  e.data = std::move(data);
  e.lru = lru_.begin();
  bytes_ += size;
}

std::optional<std::string> ObjectCache::Get(uint64_t id, uint64_t checksum) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return std::nullopt;
  Entry& e = it->second;
  if (e.checksum != checksum || Hash64(e.data) != checksum) {
    Evict(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, e.lru);
  return e.data;
}

void ObjectCache::Erase(uint64_t id) {
  if (auto it = entries_.find(id); it != entries_.end()) Evict(it);
}

void ObjectCache::Evict(std::unordered_map<uint64_t, Entry>::iterator it) {
  bytes_ -= static_cast<int64_t>(it->second.data.size());
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

}  // namespace matrix::store
