// PartitionSink: the output file of one partition, one JSON record per line,
// plain (p<N>.jsonl) or zstd-compressed (p<N>.jsonl.zst, by the name).
// The file is opened for append and locked (flock) by its one sink. Each
// record is appended with a single write(2) of the whole line, or of one
// complete zstd frame holding it (never buffered across calls: a record is
// in the file when Write returns); a write that fails half-way (full disk)
// is cut off again, and a crash leaves at most a torn last line or frame,
// which Open() detects and truncates.
// Completion is idempotent: a task id already written is never written again
// (redelivered or re-admitted copies are absorbed here).
// Thread-safety: not thread-safe; owned by the worker's event loop.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>

#include "common/base/json.h"
#include "common/base/status.h"
#include "common/base/zstd_lines.h"

namespace matrix::worker {

class PartitionSink {
 public:
  // Opens (creating) `path`, loads the ids already written and repairs a torn
  // tail. Plain lines that are not JSON objects with a task_id are warned
  // about and ignored. A ".zst" path is read frame by frame: bytes that are
  // not zstd, a frame that does not decode or a line that is not a record is
  // DataLoss naming the file and the record. FailedPrecondition when another
  // sink holds the file, or when the partition's file in the other format
  // (p0.jsonl beside p0.jsonl.zst) holds records: one partition, one file.
  static StatusOr<std::unique_ptr<PartitionSink>> Open(const std::string& path);
  ~PartitionSink();

  bool Written(const std::string& task_id) const { return written_.count(task_id) > 0; }
  // Appends the record unless its task id is already written (then returns
  // false). REQUIRES: record["task_id"] and record["status"] are strings.
  StatusOr<bool> Write(const Json& record);
  // The same for a record already serialized as one JSON line (no newline).
  StatusOr<bool> WriteLine(const std::string& task_id, const std::string& status, std::string line);

  const std::unordered_set<std::string>& written() const { return written_; }
  // Records written by this process, by status.
  const std::map<std::string, int64_t>& counts() const { return counts_; }
  int64_t preexisting() const { return preexisting_; }
  int64_t repaired_bytes() const { return repaired_bytes_; }
  const std::string& path() const { return path_; }
  bool compressed() const { return zstd_ != nullptr; }

 private:
  PartitionSink(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  std::string path_;
  int fd_;
  std::unique_ptr<ZstdFrameWriter> zstd_;  // set for a .zst file
  int64_t size_ = 0;  // bytes of whole records in the file
  std::unordered_set<std::string> written_;
  std::map<std::string, int64_t> counts_;
  int64_t preexisting_ = 0;
  int64_t repaired_bytes_ = 0;
};

}  // namespace matrix::worker
