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

namespace {

// Loads the task ids of a plain record file. Returns the bytes of whole
// lines; what follows is a torn last line.
int64_t LoadPlainIds(const std::string& path, const std::string& data, std::unordered_set<std::string>* ids) {
  int64_t keep = 0, lines = 0;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) break;  // torn tail
    ++lines;
    std::string line = data.substr(pos, nl - pos);
    auto rec = ParseJson(line, path + " line " + std::to_string(lines));
    if (rec.ok() && rec->is_object() && rec->contains("task_id") && (*rec)["task_id"].is_string()) {
      ids->insert((*rec)["task_id"].get<std::string>());
    } else {
      LOG_WARN << path << " line " << lines << ": not a record; ignored on resume";
    }
    pos = nl + 1;
    keep = static_cast<int64_t>(pos);
  }
  return keep;
}

// Loads the task ids of a zstd record file, frame by frame. Unlike a plain
// file, whose lines a person may have edited, anything but whole frames of
// records is refused: the file is only ever written by a sink.
StatusOr<int64_t> LoadZstdIds(const std::string& path, const std::string& data,
                              std::unordered_set<std::string>* ids) {
  int64_t records = 0;
  bool bad_record = false;  // the error is about record number `records`, not a frame
  size_t whole = 0;
  Status st = ForEachZstdFrame(
      data,
      [&](std::string_view content, size_t) -> Status {
        if (!content.empty() && content.back() != '\n') return DataLoss("a frame that does not end with a newline");
        size_t pos = 0;
        while (pos < content.size()) {
          const size_t nl = content.find('\n', pos);
          std::string line(content.substr(pos, nl - pos));
          pos = nl + 1;
          if (line.empty()) continue;
          ++records;
          auto rec = ParseJson(line, "record");
          if (!rec.ok() || !rec->is_object() || !rec->contains("task_id") || !(*rec)["task_id"].is_string()) {
            bad_record = true;
            return DataLoss("not a JSON record with a task_id");
          }
          ids->insert((*rec)["task_id"].get<std::string>());
        }
        return Status::Ok();
      },
      &whole);
  if (!st.ok()) {
    const int64_t at = bad_record ? records : records + 1;
    return DataLoss(path + " record " + std::to_string(at) + " (the frame at byte " + std::to_string(whole) +
                    "): " + st.message());
  }
  return static_cast<int64_t>(whole);
}

}  // namespace

StatusOr<std::unique_ptr<PartitionSink>> PartitionSink::Open(const std::string& path) {
  std::string dir = path.substr(0, path.find_last_of('/'));
  if (dir != path) MATRIX_RETURN_IF_ERROR(MakeDirs(dir));
  const bool zstd = IsZstdPath(path);
  // A partition is one file: records split over p0.jsonl and p0.jsonl.zst
  // would each look like a partial run to whoever reads one of them.
  const std::string other = zstd ? path.substr(0, path.size() - 4) : path + ".zst";
  struct stat other_st;
  if (::stat(other.c_str(), &other_st) == 0 && other_st.st_size > 0)
    return FailedPrecondition("output " + path + ": " + other + " holds records of the same partition in the " +
                              (zstd ? "plain" : "zstd") + " format (run.output_compression was " +
                              (zstd ? "none" : "zstd") + " before). Convert it (`zstd --rm " +
                              (zstd ? other : std::string("-d ") + other) +
                              "`), or use --overwrite or another --output");
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
  int64_t keep = 0, repaired = 0;
  if (existing.ok()) {
    if (zstd) {
      auto whole = LoadZstdIds(path, *existing, &ids);
      if (!whole.ok()) {
        ::close(fd);
        return whole.status();
      }
      keep = *whole;
    } else {
      keep = LoadPlainIds(path, *existing, &ids);
    }
    repaired = static_cast<int64_t>(existing->size()) - keep;
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
  if (zstd) sink->zstd_ = std::make_unique<ZstdFrameWriter>(3);
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
  if (zstd_) {
    // The record's own frame: the file stays a valid .zst after every write.
    std::string frame;
    MATRIX_RETURN_IF_ERROR(zstd_->Compress(line, &frame));
    line = std::move(frame);
  }
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
