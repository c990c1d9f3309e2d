#include "daemons/agent_worker/sink.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/base/files.h"
#include "common/base/log.h"

namespace matrix::worker {

StatusOr<std::unique_ptr<PartitionSink>> PartitionSink::Open(const std::string& path) {
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
  std::string dir = path.substr(0, path.find_last_of('/'));
  if (dir != path) MATRIX_RETURN_IF_ERROR(MakeDirs(dir));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("cannot open output " + path + ": " + std::strerror(errno));
  if (repaired > 0) {
    LOG_WARN << path << ": truncating a torn last record of " << repaired << " bytes";
    if (::ftruncate(fd, keep) != 0) {
      ::close(fd);
      return Unavailable("cannot repair " + path + ": " + std::strerror(errno));
    }
  }
  ::lseek(fd, 0, SEEK_END);
  std::unique_ptr<PartitionSink> sink(new PartitionSink(path, fd));
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
                   record.dump(-1, ' ', false, Json::error_handler_t::replace));
}

StatusOr<bool> PartitionSink::WriteLine(const std::string& id, const std::string& status, std::string line) {
  if (written_.count(id)) return false;
  line.push_back('\n');
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unavailable("write " + path_ + ": " + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  written_.insert(id);
  counts_[status]++;
  return true;
}

}  // namespace matrix::worker
