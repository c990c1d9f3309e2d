// PartitionSource: reads one partition of a JSONL dataset (optionally zstd
// compressed) row by row and admits tasks while fewer than max_concurrent of
// its tasks are in flight. Each finished task admits the next at once: there
// are no batches. Rows whose task ids are already in the output (resume) are
// skipped. A row that is not a JSON object or lacks a required field becomes
// an admission carrying an error, which the worker writes as a failed record
// naming the file and line.
// Thread-safety: not thread-safe; owned by the worker's event loop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/base/status.h"

namespace matrix::worker {

struct SourceConfig {
  std::string dataset_path;
  uint32_t partition = 0;
  uint32_t partitions = 1;
  uint64_t limit = 0;           // rows of the whole dataset considered; 0 = all
  uint32_t trials = 1;          // tasks per row
  size_t max_concurrent = 1000; // tasks of this partition in flight
  std::vector<std::string> required_fields;
};

// Stable task id: derived from the dataset row (1-based line) and trial, so a
// rerun gives the same id whatever the partition count.
std::string MakeTaskId(uint64_t row, uint32_t trial);

class LineReader;

class PartitionSource {
 public:
  struct Admission {
    std::string task_id;
    uint64_t row = 0;
    uint32_t trial = 0;
    std::string row_json;  // the row, compact JSON
    Status error;          // not OK: the row is invalid; write a failed record
  };

  static StatusOr<std::unique_ptr<PartitionSource>> Open(SourceConfig config,
                                                         std::unordered_set<std::string> done_ids);
  ~PartitionSource();

  // Produces the next admission if capacity allows; false when at capacity or
  // exhausted. The task counts as in flight until OnFinished(task_id).
  bool Next(Admission* out);
  void OnFinished(const std::string& task_id);
  // Stops admitting (shutdown).
  void Close() { closed_ = true; }

  bool Exhausted() const { return exhausted_; }
  bool Finished() const { return exhausted_ && in_flight_.empty(); }
  size_t in_flight() const { return in_flight_.size(); }
  uint64_t total_tasks() const { return total_tasks_; }  // in this partition
  uint64_t skipped() const { return skipped_; }           // already written before this run
  uint64_t admitted() const { return admitted_; }

 private:
  PartitionSource(SourceConfig config, std::unordered_set<std::string> done_ids);
  bool ReadRow();  // loads the next row of this partition into pending_

  SourceConfig config_;
  std::unordered_set<std::string> done_;
  std::unordered_set<std::string> in_flight_;
  std::unique_ptr<LineReader> reader_;
  uint64_t line_no_ = 0;
  uint64_t total_tasks_ = 0;
  uint64_t skipped_ = 0;
  uint64_t admitted_ = 0;
  bool exhausted_ = false;
  bool closed_ = false;
  bool exhausted_after_row_ = false;
  // The current row and the next trial to admit from it.
  bool have_row_ = false;
  uint64_t row_ = 0;
  uint32_t next_trial_ = 0;
  std::string row_json_;
  Status row_error_;
};

}  // namespace matrix::worker
