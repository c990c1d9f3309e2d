#include "daemons/agent_worker/sink.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/base/files.h"
#include "common/base/log.h"

namespace matrix::worker {

StatusOr<std::unique_ptr<PartitionSink>> PartitionSink::Open(const std::string& path) {
  std::string dir = path.substr(0, path.find_last_of('/'));
  if (dir != path) MATRIX_RETURN_IF_ERROR(MakeDirs(dir));
  // Appends only, and one writer: the lock is held until this sink closes
  // (or its process dies), so a second run on the same output refuses.
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("cannot open output " + path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == ENOSYS || err == EINVAL || err == EOPNOTSUPP) {
      // Some cluster filesystems are mounted without lock support (Lustre
      // without -o flock): run unlocked rather than not at all.
      LOG_WARN << path << ": the filesystem does not support locks (" << std::strerror(err)
               << "); nothing stops a second run from writing this file";
    } else {
      ::close(fd);
      if (err == EWOULDBLOCK)
        return FailedPrecondition("output " + path + " is being written by another run (locked); stop it first");
      return Unavailable("cannot lock output " + path + ": " + std::strerror(err));
    }
  }
  auto existing = ReadFile(path);
  std::unordered_set<std::string> ids;
  int64_t keep = 0, repaired = 0, lines = 0;
  if (existing.ok()) {
    const std::string& data = *existing;
    size_t pos = 0;
    while (pos < data.size()) {
      size_t nl = data.find('\n', pos);
      if (nl == std::string::npos) {
        repaired = static_cast<int64_t>(data.size() - pos);  // torn tail
        break;
      }
      ++lines;
      std::string line = data.substr(pos, nl - pos);
      auto rec = ParseJson(line, path + " line " + std::to_string(lines));
      if (rec.ok() && rec->is_object() && rec->contains("task_id") && (*rec)["task_id"].is_string()) {
        ids.insert((*rec)["task_id"].get<std::string>());
      } else {
        LOG_WARN << path << " line " << lines << ": not a record; ignored on resume";
      }
      pos = nl + 1;
      keep = static_cast<int64_t>(pos);
    }
  }
  if (repaired > 0) {
    LOG_WARN << path << ": truncating a torn last record of " << repaired << " bytes";
    if (::ftruncate(fd, keep) != 0) {
      const int err = errno;
      ::close(fd);
      return Unavailable("cannot repair " + path + ": " + std::strerror(err));
    }
  }
  std::unique_ptr<PartitionSink> sink(new PartitionSink(path, fd));
  sink->size_ = keep;
  sink->preexisting_ = static_cast<int64_t>(ids.size());
  sink->written_ = std::move(ids);
  sink->repaired_bytes_ = repaired;
  return sink;
}

PartitionSink::~PartitionSink() {
  ::fdatasync(fd_);
  ::close(fd_);
}

StatusOr<bool> PartitionSink::Write(const Json& record) {
  return WriteLine(record["task_id"].get<std::string>(), record["status"].get<std::string>(),
                   DumpJson(record));
}

StatusOr<bool> PartitionSink::WriteLine(const std::string& id, const std::string& status, std::string line) {
  if (written_.count(id)) return false;
  line.push_back('\n');
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      // A part of the line may be on disk (a full disk takes what fits):
      // cut it off, so the file stays whole records.
      if (off > 0 && ::ftruncate(fd_, size_) != 0)
        LOG_ERROR << path_ << ": cannot cut a partly written record: " << std::strerror(errno);
      return Unavailable("write " + path_ + ": " + std::strerror(err));
    }
    off += static_cast<size_t>(n);
  }
  size_ += static_cast<int64_t>(line.size());
  written_.insert(id);
  counts_[status]++;
  return true;
}

}  // namespace matrix::worker
