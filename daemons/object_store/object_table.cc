// ObjectTable: in-memory objects with LRU spill to disk, checksums on every
// read, TTL expiry. Single-threaded (the store's event loop).
#include "daemons/object_store/object_table.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "common/base/log.h"

namespace matrix::store {
namespace {

std::string ObjectName(uint64_t id) { return "object " + Hex64(id); }

}  // namespace

StatusOr<std::unique_ptr<ObjectTable>> ObjectTable::Create(const StoreConfig& config,
                                                           const Clock* clock) {
  if (config.memory_budget_bytes < 0 || config.max_object_bytes <= 0 || config.default_ttl_ms <= 0)
    return FailedPrecondition("object table: memory budget, max object size and TTL must be positive");
  if (!config.spill_dir.empty()) {
    Status st = MakeDirs(config.spill_dir, 0700);
    if (!st.ok()) return FailedPrecondition("spill directory: " + st.message());
  }
  return std::unique_ptr<ObjectTable>(new ObjectTable(config, clock));
}

ObjectTable::ObjectTable(const StoreConfig& config, const Clock* clock)
    : clock_(clock),
      memory_budget_bytes_(config.memory_budget_bytes),
      spill_dir_(config.spill_dir),
      default_ttl_ms_(config.default_ttl_ms),
      max_object_bytes_(config.max_object_bytes) {}

ObjectTable::~ObjectTable() {
  for (const auto& [id, e] : objects_)
    if (!e.in_memory) ::unlink(SpillPath(id).c_str());
}

std::string ObjectTable::SpillPath(uint64_t id) const {
  return spill_dir_ + "/" + Hex64(id) + ".obj";
}

Status ObjectTable::Put(uint64_t id, std::string data, uint64_t checksum, int64_t ttl_ms) {
  const uint64_t size = data.size();
  if (size > static_cast<uint64_t>(max_object_bytes_)) {
    ++stats_.put_errors;
    return InvalidArgument(ObjectName(id) + " is " + std::to_string(size) +
                           " bytes, above the store's limit of " + std::to_string(max_object_bytes_));
  }
  if (Hash64(data) != checksum) {
    ++stats_.put_errors;
    return DataLoss(ObjectName(id) + ": payload does not match its checksum " + Hex64(checksum));
  }
  if (auto it = objects_.find(id); it != objects_.end()) {
    Entry& e = it->second;
    if (e.checksum != checksum || e.size != size) {
      ++stats_.put_errors;
      return Status(StatusCode::kAlreadyExists,
                    ObjectName(id) + " already held with checksum " + Hex64(e.checksum));
    }
    if (ttl_ms > 0) e.ttl_ms = ttl_ms;
    Touch(id, e);
    ++stats_.puts;
    return Status::Ok();
  }

  Entry e;
  e.size = size;
  e.checksum = checksum;
  e.ttl_ms = ttl_ms > 0 ? ttl_ms : default_ttl_ms_;
  if (MakeRoom(size)) {
    e.in_memory = true;
    e.data = std::move(data);
  } else {
    Status st = spill_dir_.empty() ? Unavailable("no spill directory") : WriteSpill(id, data);
    if (!st.ok()) {
      ++stats_.put_errors;
      return ResourceExhausted(ObjectName(id) + " (" + std::to_string(size) +
                               " bytes) does not fit: memory budget " +
                               std::to_string(memory_budget_bytes_) + " bytes in use " +
                               std::to_string(stats_.memory_bytes) + ", spill failed: " +
                               st.message());
    }
    ++stats_.spills;
  }

  auto [it, inserted] = objects_.emplace(id, std::move(e));
  Entry& held = it->second;
  held.expires_ms = clock_->NowMillis() + held.ttl_ms;
  expiry_.emplace(held.expires_ms, id);
  if (held.in_memory) {
    lru_.push_front(id);
    held.lru = lru_.begin();
    stats_.memory_bytes += static_cast<int64_t>(size);
  } else {
    stats_.disk_bytes += static_cast<int64_t>(size);
  }
  stats_.objects = static_cast<int64_t>(objects_.size());
  ++stats_.puts;
  return Status::Ok();
}

bool ObjectTable::MakeRoom(uint64_t needed) {
  if (needed > static_cast<uint64_t>(memory_budget_bytes_)) return false;
  while (stats_.memory_bytes + static_cast<int64_t>(needed) > memory_budget_bytes_) {
    if (lru_.empty() || spill_dir_.empty()) return false;
    uint64_t victim = lru_.back();
    Entry& e = objects_.at(victim);
    if (!WriteSpill(victim, e.data).ok()) return false;
    lru_.pop_back();
    e.in_memory = false;
    std::string().swap(e.data);
    stats_.memory_bytes -= static_cast<int64_t>(e.size);
    stats_.disk_bytes += static_cast<int64_t>(e.size);
    ++stats_.spills;
  }
  return true;
}

Status ObjectTable::WriteSpill(uint64_t id, const std::string& data) {
  const std::string path = SpillPath(id);
  auto fail = [&](const char* what) {
    Status st = Unavailable(std::string(what) + " " + path + ": " + std::strerror(errno));
    const int64_t now = clock_->NowMillis();
    if (now - last_spill_warning_ms_ >= 10'000) {  // disk trouble repeats on every put
      last_spill_warning_ms_ = now;
      LOG_WARN << "spill of " << ObjectName(id) << " failed: " << st.message();
    }
    return st;
  };
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("create");
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status st = fail("write");
      ::close(fd);
      ::unlink(path.c_str());
      return st;
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    Status st = fail("close");
    ::unlink(path.c_str());
    return st;
  }
  return Status::Ok();
}

StatusOr<std::string> ObjectTable::Get(uint64_t id) {
  auto it = objects_.find(id);
  if (it == objects_.end()) {
    ++stats_.get_misses;
    return NotFound(ObjectName(id) + " not found");
  }
  Entry& e = it->second;
  std::string data;
  std::string where;
  if (e.in_memory) {
    data = e.data;
    where = "in memory";
  } else {
    where = "in spill file " + SpillPath(id);
    auto read = ReadFile(SpillPath(id));
    if (read.ok()) data = std::move(read).value();
    else where += " (" + read.status().message() + ")";
  }
  if (data.size() != e.size || Hash64(data) != e.checksum) {
    ++stats_.checksum_failures;
    LOG_WARN << ObjectName(id) << " failed its checksum " << where << "; dropped";
    Remove(it);
    return DataLoss(ObjectName(id) + " failed its checksum " + where);
  }
  if (!e.in_memory && stats_.memory_bytes + static_cast<int64_t>(e.size) <= memory_budget_bytes_) {
    ::unlink(SpillPath(id).c_str());
    e.data = data;
    e.in_memory = true;
    lru_.push_front(id);
    e.lru = lru_.begin();
    stats_.disk_bytes -= static_cast<int64_t>(e.size);
    stats_.memory_bytes += static_cast<int64_t>(e.size);
    ++stats_.promotions;
  }
  Touch(id, e);
  ++stats_.gets;
  return data;
}

bool ObjectTable::Lookup(uint64_t id, uint64_t* size, uint64_t* checksum) const {
  auto it = objects_.find(id);
  if (it == objects_.end()) return false;
  if (size) *size = it->second.size;
  if (checksum) *checksum = it->second.checksum;
  return true;
}

void ObjectTable::Free(uint64_t id) {
  auto it = objects_.find(id);
  if (it == objects_.end()) return;
  Remove(it);
  ++stats_.frees;
}

int64_t ObjectTable::ExpireOlderThan(int64_t now_ms) {
  int64_t freed = 0;
  while (!expiry_.empty() && expiry_.begin()->first <= now_ms) {
    uint64_t id = expiry_.begin()->second;
    Remove(objects_.find(id));
    ++freed;
  }
  stats_.expirations += freed;
  return freed;
}

ObjectTableStats ObjectTable::stats() const {
  ObjectTableStats s = stats_;
  s.memory_objects = static_cast<int64_t>(lru_.size());
  return s;
}

void ObjectTable::Touch(uint64_t id, Entry& e) {
  expiry_.erase({e.expires_ms, id});
  e.expires_ms = clock_->NowMillis() + e.ttl_ms;
  expiry_.emplace(e.expires_ms, id);
  if (e.in_memory) lru_.splice(lru_.begin(), lru_, e.lru);
}

void ObjectTable::Remove(std::unordered_map<uint64_t, Entry>::iterator it) {
  const uint64_t id = it->first;
  Entry& e = it->second;
  if (e.in_memory) {
    lru_.erase(e.lru);
    stats_.memory_bytes -= static_cast<int64_t>(e.size);
  } else {
    ::unlink(SpillPath(id).c_str());
    stats_.disk_bytes -= static_cast<int64_t>(e.size);
  }
  expiry_.erase({e.expires_ms, id});
  objects_.erase(it);
  stats_.objects = static_cast<int64_t>(objects_.size());
}

}  // namespace matrix::store
