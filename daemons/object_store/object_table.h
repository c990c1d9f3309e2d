// ObjectTable: the object store's data, without sockets. Objects are byte
// strings keyed by a 64-bit id, each with the Hash64 checksum its writer
// computed. Payloads live in memory up to a byte budget; beyond it the least
// recently used objects are spilled to one file each under the spill
// directory and read back transparently. Every read, from memory or disk, is
// verified against the checksum.
//
// Lifecycle: Create() makes the spill directory; the destructor removes the
// spill files of objects still held.
// Thread-safety: none; owned and called by the store's event loop thread.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/base/clock.h"
#include "common/base/status.h"
#include "daemons/object_store/store_config.h"

namespace matrix::store {

struct ObjectTableStats {
  int64_t objects = 0;          // held now, in memory or on disk
  int64_t memory_objects = 0;   // of those, held in memory (the rest are spilled)
  int64_t memory_bytes = 0;     // payload bytes held in memory
  int64_t disk_bytes = 0;       // payload bytes held in spill files
  int64_t puts = 0;             // accepted puts, idempotent repeats included
  int64_t put_errors = 0;       // rejected puts (size, checksum, conflict, no room)
  int64_t gets = 0;             // successful reads
  int64_t get_misses = 0;       // reads of unknown ids
  int64_t frees = 0;            // objects freed by request
  int64_t spills = 0;           // objects written to disk
  int64_t promotions = 0;       // spilled objects read back into memory
  int64_t expirations = 0;      // objects freed by the expiry sweep
  int64_t checksum_failures = 0;  // stored data found corrupt on read
};

class ObjectTable {
 public:
  // Uses config.memory_budget_bytes, spill_dir, default_ttl_ms and
  // max_object_bytes. Fails with kFailedPrecondition when the spill directory
  // cannot be created. `clock` must outlive the table.
  static StatusOr<std::unique_ptr<ObjectTable>> Create(const StoreConfig& config,
                                                       const Clock* clock);
  ~ObjectTable();
  ObjectTable(const ObjectTable&) = delete;
  ObjectTable& operator=(const ObjectTable&) = delete;

  // Stores `data` under `id`. ttl_ms 0 means the configured default.
  // On success the object is held until Free(), or until it goes unread
  // for its TTL. Idempotent: putting an id again with the same checksum
  // succeeds and only refreshes its TTL.
  // Fails, storing nothing, with
  //   kInvalidArgument    data larger than max_object_bytes
  //   kDataLoss           Hash64(data) != checksum (corrupted in transit)
  //   kAlreadyExists      id held with a different checksum
  //   kResourceExhausted  no room in memory and the object cannot be spilled
  Status Put(uint64_t id, std::string data, uint64_t checksum, int64_t ttl_ms = 0);

  // Returns the object's bytes, read from memory or from its spill file
  // (promoted back to memory when the budget has room without spilling).
  // Refreshes the object's TTL and LRU position.
  // kNotFound for unknown ids. kDataLoss naming the object when the bytes no
  // longer match the checksum; the corrupt object is dropped, so a later
  // get is kNotFound and a re-put stores it afresh.
  StatusOr<std::string> Get(uint64_t id);

  // The checksum and size of a held object, without reading it.
  bool Lookup(uint64_t id, uint64_t* size, uint64_t* checksum) const;

  // Frees the object; unknown ids are ignored (idempotent).
  void Free(uint64_t id);

  // Frees every object whose TTL ran out at or before now_ms (Clock
  // milliseconds). Returns how many were freed.
  int64_t ExpireOlderThan(int64_t now_ms);

  ObjectTableStats stats() const;
  // Path of the spill file an object would use (for tests and logs).
  std::string SpillPath(uint64_t id) const;

 private:
  struct Entry {
    uint64_t size = 0;
    uint64_t checksum = 0;
    int64_t ttl_ms = 0;
    int64_t expires_ms = 0;
    bool in_memory = false;
    std::string data;                    // the payload when in_memory
    std::list<uint64_t>::iterator lru;   // position in lru_ when in_memory
  };

  ObjectTable(const StoreConfig& config, const Clock* clock);
  // Spills least recently used objects until `needed` more bytes fit in the
  // budget. False when it cannot (nothing left to spill, disk error).
  bool MakeRoom(uint64_t needed);
  Status WriteSpill(uint64_t id, const std::string& data);
  void Touch(uint64_t id, Entry& e);
  void Remove(std::unordered_map<uint64_t, Entry>::iterator it);

  const Clock* clock_;
  int64_t memory_budget_bytes_;
  std::string spill_dir_;
  int64_t default_ttl_ms_;
  int64_t max_object_bytes_;
  int64_t last_spill_warning_ms_ = INT64_MIN / 2;

  // Invariants:
  //   lru_ holds exactly the ids of in-memory entries, most recent first.
  //   expiry_ holds exactly one (expires_ms, id) pair per entry.
  //   stats_.memory_bytes == sum of size over in-memory entries <= budget.
  //   stats_.disk_bytes == sum of size over spilled entries, each of which
  //   has a file at SpillPath(id).
  std::unordered_map<uint64_t, Entry> objects_;
  std::list<uint64_t> lru_;
  std::set<std::pair<int64_t, uint64_t>> expiry_;
  ObjectTableStats stats_;
};

}  // namespace matrix::store
