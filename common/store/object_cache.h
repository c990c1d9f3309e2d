// ObjectCache: a worker-local LRU cache of object payloads bounded in bytes.
// Entries are keyed by object id and verified against the reference's
// checksum on every hit, so a corrupted or mismatched entry is dropped and
// read again from the store instead of being served.
// Thread-safety: none; owned by one StoreClient on its owner's loop thread.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>

namespace matrix::store {

class ObjectCache {
 public:
  // capacity_bytes 0 disables caching.
  explicit ObjectCache(int64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  // Inserts (or refreshes) an object. Objects larger than the capacity are
  // not cached; older entries are evicted to make room.
  void Put(uint64_t id, uint64_t checksum, std::string data);
  // The payload when cached and Hash64(payload) == checksum; a cached entry
  // that does not match is evicted and nullopt returned.
  std::optional<std::string> Get(uint64_t id, uint64_t checksum);
  void Erase(uint64_t id);

  int64_t bytes() const { return bytes_; }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t checksum = 0;
    std::string data;
    std::list<uint64_t>::iterator lru;
  };
  void Evict(std::unordered_map<uint64_t, Entry>::iterator it);

  int64_t capacity_bytes_;
  // Invariants: lru_ holds exactly the ids in entries_, most recent first;
  // bytes_ == sum of data sizes <= capacity_bytes_.
  std::unordered_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;
  int64_t bytes_ = 0;
};

}  // namespace matrix::store
