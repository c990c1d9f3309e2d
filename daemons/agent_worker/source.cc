#include "daemons/agent_worker/source.h"

#include <cstdio>
#include <cstring>

#include "common/base/json.h"
#include "common/base/utf8.h"
#include "common/base/zstd_lines.h"

namespace matrix::worker {

std::string MakeTaskId(uint64_t row, uint32_t trial) {
  return "r" + std::to_string(row) + ".t" + std::to_string(trial);
}

PartitionSource::PartitionSource(SourceConfig config, std::unordered_set<std::string> done_ids)
    : config_(std::move(config)), done_(std::move(done_ids)) {}

PartitionSource::~PartitionSource() = default;

StatusOr<std::unique_ptr<PartitionSource>> PartitionSource::Open(
    SourceConfig config, std::unordered_set<std::string> done_ids) {
  if (config.partitions == 0 || config.partition >= config.partitions)
    return InvalidArgument("partition " + std::to_string(config.partition) + " out of range");
  if (config.trials == 0) config.trials = 1;
  std::unique_ptr<PartitionSource> src(new PartitionSource(config, std::move(done_ids)));
  // Count this partition's rows first, for progress and ETA.
  {
    MATRIX_ASSIGN_OR_RETURN(auto counter, LineReader::Open(config.dataset_path));
    std::string line, error;
    uint64_t n = 0, rows = 0;
    while (counter->Next(&line, &error)) {
      ++n;
      if (config.limit && n > config.limit) break;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      if ((n - 1) % config.partitions == config.partition) ++rows;
    }
    src->total_tasks_ = rows * config.trials;
  }
  MATRIX_ASSIGN_OR_RETURN(src->reader_, LineReader::Open(config.dataset_path));
  return src;
}

bool PartitionSource::ReadRow() {
  std::string line, error;
  while (true) {
    if (!reader_->Next(&line, &error)) {
      if (!error.empty()) {
        // A corrupt compressed stream ends this partition with one failed row.
        have_row_ = true;
        row_ = line_no_ + 1;
        row_json_.clear();
        row_error_ = InvalidArgument(config_.dataset_path + " after line " + std::to_string(line_no_) +
                                     ": " + error);
        next_trial_ = 0;
        exhausted_after_row_ = true;
        return true;
      }
      return false;
    }
    ++line_no_;
    if (config_.limit && line_no_ > config_.limit) return false;
    if ((line_no_ - 1) % config_.partitions != config_.partition) continue;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    have_row_ = true;
    row_ = line_no_;
    next_trial_ = 0;
    row_error_ = Status::Ok();
    row_json_.clear();
    std::string where = config_.dataset_path + " line " + std::to_string(line_no_);
    auto parsed = ParseJson(line, where);
    if (!parsed.ok()) {
      row_error_ = parsed.status();
    } else if (!parsed->is_object()) {
      row_error_ = InvalidArgument(where + ": row is not a JSON object");
    } else {
      for (const auto& field : config_.required_fields) {
        if (!parsed->contains(field)) {
          row_error_ = InvalidArgument(where + ": missing required field '" + field + "'");
          break;
        }
      }
      row_json_ = DumpJson(*parsed);
    }
    // The raw text, as a JSON string; bytes that are not UTF-8 become U+FFFD.
    if (!row_error_.ok()) row_json_ = DumpJson(Json(ToValidUtf8(std::string_view(line).substr(0, 4096))));
    return true;
  }
}

bool PartitionSource::Next(Admission* out, bool new_rows) {
  if (!closed_ && !readmit_.empty()) {
    std::string id = readmit_.back();
    readmit_.pop_back();
    auto it = in_flight_.find(id);
    if (it != in_flight_.end()) {
      out->task_id = id;
      out->row = it->second.row;
      out->trial = it->second.trial;
      out->row_json = it->second.row_json;
      out->error = Status::Ok();
      out->attempt = it->second.attempt;
      return true;
    }
  }
  while (new_rows && !closed_ && !exhausted_ && in_flight_.size() < config_.max_concurrent) {
    if (!have_row_ || next_trial_ >= config_.trials) {
      have_row_ = false;
      if (exhausted_after_row_ || !ReadRow()) {
        exhausted_ = true;
        return false;
      }
    }
    uint32_t trial = next_trial_++;
    std::string id = MakeTaskId(row_, trial);
    if (done_.count(id)) {
      ++skipped_;
      continue;
    }
    in_flight_[id] = InFlight{row_, trial, 1, 0, 0, row_error_.ok() ? row_json_ : std::string()};
    ++admitted_;
    out->task_id = id;
    out->row = row_;
    out->trial = trial;
    out->row_json = row_json_;
    out->error = row_error_;
    out->attempt = 1;
    return true;
  }
  return false;
}

void PartitionSource::OnFinished(const std::string& task_id) {
  in_flight_.erase(task_id);
  done_.insert(task_id);
}

bool PartitionSource::Readmit(const std::string& task_id, uint32_t max_attempts, bool charge) {
  auto it = in_flight_.find(task_id);
  if (it == in_flight_.end()) return false;
  InFlight& f = it->second;
  if (charge) {
    if (f.attempt >= max_attempts) return false;
    f.attempt++;
  } else {
    if (f.free_readmits >= kMaxFreeReadmits) return false;
    f.free_readmits++;
  }
  readmit_.push_back(task_id);
  return true;
}

std::vector<std::string> PartitionSource::InFlightIds() const {
  std::vector<std::string> ids;
  ids.reserve(in_flight_.size());
  for (const auto& [id, f] : in_flight_) ids.push_back(id);
  return ids;
}

std::vector<std::string> PartitionSource::AdmittedBefore(int64_t cutoff_ns) const {
  std::vector<std::string> ids;
  for (const auto& [id, f] : in_flight_)
    if (f.admitted_ns < cutoff_ns) ids.push_back(id);
  return ids;
}

void PartitionSource::SetAdmitTime(const std::string& task_id, int64_t now_ns) {
  auto it = in_flight_.find(task_id);
  if (it != in_flight_.end()) it->second.admitted_ns = now_ns;
}

bool PartitionSource::InFlightAdmission(const std::string& task_id, Admission* out) const {
  auto it = in_flight_.find(task_id);
  if (it == in_flight_.end()) return false;
  *out = Admission{task_id, it->second.row, it->second.trial, it->second.row_json, Status::Ok(), it->second.attempt};
  return true;
}

uint32_t PartitionSource::Attempt(const std::string& task_id) const {
  auto it = in_flight_.find(task_id);
  return it == in_flight_.end() ? 0 : it->second.attempt;
}

}  // namespace matrix::worker
