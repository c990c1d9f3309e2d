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
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/base/status.h"

namespace matrix {
class LineReader;
}

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

class PartitionSource {
 public:
  struct Admission {
    std::string task_id;
    uint64_t row = 0;
    uint32_t trial = 0;
    std::string row_json;  // the row, compact JSON
    Status error;          // not OK: the row is invalid; write a failed record
    uint32_t attempt = 1;  // > 1 when the task is re-admitted after being lost
  };

  static StatusOr<std::unique_ptr<PartitionSource>> Open(SourceConfig config,
                                                         std::unordered_set<std::string> done_ids);
  ~PartitionSource();

  // Produces the next admission if capacity allows; false when at capacity or
  // exhausted. The task counts as in flight until OnFinished(task_id).
  // `new_rows` false: only tasks queued for re-admission, no new row.
  bool Next(Admission* out, bool new_rows = true);
  void OnFinished(const std::string& task_id);
  // Queues an in-flight task to be admitted again from its row (its message
  // was lost with a broker, or its stored objects with a store). `charge`:
  // the loss may be the task's own doing (it made no progress), so it uses
  // one of its max_attempts; otherwise (infrastructure: a broker, store or
  // worker died) it is free, up to kMaxFreeReadmits. False when the task is
  // not in flight or has used its attempts; the caller then writes it as lost.
  bool Readmit(const std::string& task_id, uint32_t max_attempts, bool charge = true);
  static constexpr uint32_t kMaxFreeReadmits = 20;
  // Ids of every task in flight (e.g. to re-admit after a broker restart).
  std::vector<std::string> InFlightIds() const;
  // Tasks admitted (or re-admitted) before `cutoff_ns` and still in flight.
  std::vector<std::string> AdmittedBefore(int64_t cutoff_ns) const;
  void SetAdmitTime(const std::string& task_id, int64_t now_ns);
  uint32_t Attempt(const std::string& task_id) const;
  // The admission data of an in-flight task (for writing it as lost).
  bool InFlightAdmission(const std::string& task_id, Admission* out) const;
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
  struct InFlight {
    uint64_t row = 0;
    uint32_t trial = 0;
    uint32_t attempt = 1;
    uint32_t free_readmits = 0;  // re-admissions not charged to the task
    int64_t admitted_ns = 0;
    std::string row_json;
  };
  std::unordered_map<std::string, InFlight> in_flight_;
  std::vector<std::string> readmit_;  // ids to admit again, in order
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
