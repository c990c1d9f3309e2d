// The partitions this worker owns: admission of rows from their sources,
// the sink that writes records (and holds them while the output is blocked),
// re-admission of tasks that were lost.

#include "daemons/agent_worker/worker_impl.h"

#include <algorithm>

#include "common/base/hash.h"
#include "common/base/log.h"

namespace matrix::worker {

using config::RoleType;

Worker::Impl::Partition* Worker::Impl::FindPartition(const std::string& owner) {
  for (auto& p : partitions_)
    if (p.owner == owner) return &p;
  return nullptr;
}

void Worker::Impl::HandleSink(uint64_t id) {
  TaskRun& run = runs_[id];
  Partition* part = FindPartition(run.task.owner);
  if (!part) {
    LOG_WARN << "task " << run.task.task_id << " for unknown owner " << run.task.owner << " handed back";
    Ack(run.lease, /*requeue=*/true);
    runs_.erase(id);
    return;
  }
  if (run.task.status == wire::TaskStatus::kRunning) return StartFanout(id);  // at a fan-out step
  if (run.task.branch) return OnBranchResult(id);
  if (part->Written(run.task.task_id)) {
    ++duplicates_;
    metrics_.duplicates_absorbed.Inc();
    // Its archived segments hold references too: load them, then free all.
    Fetch(id, [this](uint64_t rid) {
      TaskRun& r = runs_[rid];
      FreeRefs(Expanded(r));
      FindPartition(r.task.owner)->source->OnFinished(r.task.task_id);
      Ack(r.lease);
      runs_.erase(rid);
    });
    return;
  }
  if (run.task.status == wire::TaskStatus::kLost &&
      (run.task.reason == "object_unavailable" || run.task.reason == "env_lost" || run.task.reason == "llm_outage") &&
      part->source->Readmit(run.task.task_id, static_cast<uint32_t>(pipeline_->run.max_attempts),
                            /*charge=*/false)) {
    // Its stored content is gone (a store restarted): run it again from its row.
    LOG_INFO << "task " << run.task.task_id << " lost "
             << (run.task.reason == "env_lost"     ? "its environment"
                 : run.task.reason == "llm_outage" ? "its model (no endpoint reachable)"
                                                   : "its stored objects")
             << "; admitting it again (not counted against its attempts)";
    FreeRefs(run.task);
    Ack(run.lease);
    runs_.erase(id);
    return;
  }
  Fetch(id, [this](uint64_t rid) {
    TaskRun& r = runs_[rid];
    WriteRecord(r);
    runs_.erase(rid);
  });
}

void Worker::Impl::Readmit(Partition& part, const std::string& task_id, const std::string& why, bool charge) {
  DropJoinsOf(task_id);  // its branches report to a parent that is gone
  if (part.source->Readmit(task_id, static_cast<uint32_t>(pipeline_->run.max_attempts), charge)) return;
  PartitionSource::Admission adm;
  if (!part.source->InFlightAdmission(task_id, &adm)) return;
  // Every attempt was lost: the record says so, and nothing is dropped.
  TaskRun run;
  wire::Task& t = run.task;
  t.run_id = config_.run_id;
  t.task_id = task_id;
  t.partition = part.index;
  t.row = adm.row;
  t.trial = adm.trial;
  t.attempt = adm.attempt;
  t.owner = part.owner;
  t.pipeline = pipeline_->name;
  t.pipeline_hash = pipeline_->hash;
  t.input.text = adm.row_json;
  t.status = wire::TaskStatus::kLost;
  t.reason = "max_attempts";
  t.error = "lost " + std::to_string(adm.attempt) + " times; last: " + why;
  ++lost_;
  WriteRecord(run);
}

void Worker::Impl::ReadmitAll(const std::string& why) {
  for (auto& part : partitions_) {
    auto ids = part.source->InFlightIds();
    if (!ids.empty()) LOG_WARN << why << ": admitting " << ids.size() << " in-flight tasks of " << part.owner << " again";
    for (const auto& id : ids) Readmit(part, id, why, /*charge=*/false);
  }
}

void Worker::Impl::ReadmitStale() {
  int64_t timeout_ns = static_cast<int64_t>(pipeline_->run.task_timeout_s * 1e9);
  int64_t now = clock_->NowNanos();
  for (auto& part : partitions_) {
    for (const auto& id : part.source->AdmittedBefore(now - timeout_ns)) {
      part.source->SetAdmitTime(id, now);
      Readmit(part, id, "no progress for " + std::to_string(static_cast<int64_t>(pipeline_->run.task_timeout_s)) + " s",
              /*charge=*/true);
    }
  }
}

void Worker::Impl::WriteRecord(TaskRun& run) {
  Partition* part = FindPartition(run.task.owner);
  wire::Task full = Expanded(run);
  const bool drop = part->dropped && full.status != wire::TaskStatus::kDone;
  std::string line = drop ? DroppedRecordLine(full, clock_->WallMicros())
                          : RecordLine(full, run.resolved, clock_->WallMicros());
  Partition::Blocked record{run.lease, std::move(full), std::move(line), drop};
  // Behind records that wait for the output: keep the file's order and do not
  // hammer a full disk.
  if (!part->blocked.empty() || !TryWriteRecord(*part, record)) {
    part->blocked.push_back(std::move(record));
    ++output_blocked_;
  }
}

bool Worker::Impl::TryWriteRecord(Partition& part, Partition::Blocked& record) {
  const int64_t now = clock_->NowNanos();
  PartitionSink& sink = record.dropped ? *part.dropped : *part.sink;
  auto written = sink.WriteLine(record.full.task_id, wire::TaskStatusName(record.full.status), record.line);
  if (!written.ok()) {
    // The task stays whole and unacknowledged; admission pauses and the write
    // is retried with a back-off (RetryBlockedRecords) until the output takes it.
    metrics_.output_write_errors.Inc();
    if (output_error_.empty()) output_blocked_since_ns_ = now;
    output_backoff_s_ = output_error_.empty() ? 1.0 : std::min(output_backoff_s_ * 2, 30.0);
    output_retry_ns_ = now + static_cast<int64_t>(output_backoff_s_ * 1e9);
    output_error_ = written.status().message();
    LOG_ERROR << "output blocked for " << (now - output_blocked_since_ns_) / 1'000'000'000 << " s: " << output_error_
              << "; " << output_blocked_ + 1 << " records wait; admission paused; next try in " << output_backoff_s_
              << " s";
    return false;
  }
  if (*written) {
    RecordWritten(record.full.status);
  } else {
    ++duplicates_;
    metrics_.duplicates_absorbed.Inc();
  }
  FreeRefs(record.full);
  part.source->OnFinished(record.full.task_id);
  Ack(record.lease);
  return true;
}

void Worker::Impl::RetryBlockedRecords() {
  if (output_blocked_ == 0 || clock_->NowNanos() < output_retry_ns_) return;
  for (auto& part : partitions_) {
    while (!part.blocked.empty()) {
      if (!TryWriteRecord(part, part.blocked.front())) return;
      part.blocked.pop_front();
      --output_blocked_;
    }
  }
  LOG_INFO << "output writable again after " << (clock_->NowNanos() - output_blocked_since_ns_) / 1'000'000 << " ms";
  output_error_.clear();
}

void Worker::Impl::NoteLlmOutcome(bool ok) {
  // Run-level guard: when most recent calls fail (endpoint down, bad key,
  // quota gone), stop admitting for a while instead of turning the dataset
  // into failed records. The pause doubles while the failures go on.
  constexpr size_t kWindow = 200, kMinCalls = 100;
  constexpr double kMaxErrorRatio = 0.8;
  llm_window_.push_back(ok);
  if (!ok) ++llm_window_errors_;
  if (llm_window_.size() > kWindow) {
    if (!llm_window_.front()) --llm_window_errors_;
    llm_window_.pop_front();
  }
  int64_t now = clock_->NowNanos();
  if (llm_window_.size() >= kMinCalls &&
      llm_window_errors_ > kMaxErrorRatio * static_cast<double>(llm_window_.size()) && now >= admit_paused_until_ns_) {
    admit_pause_s_ = admit_pause_s_ == 0 ? 5 : std::min(admit_pause_s_ * 2, 120);
    admit_paused_until_ns_ = now + static_cast<int64_t>(admit_pause_s_) * 1'000'000'000;
    ++admission_pauses_;
    LOG_WARN << llm_window_errors_ << " of the last " << llm_window_.size()
             << " LLM calls failed: pausing admission for " << admit_pause_s_ << " s";
    llm_window_.clear();
    llm_window_errors_ = 0;
  } else if (ok && now >= admit_paused_until_ns_ && llm_window_errors_ == 0) {
    admit_pause_s_ = 0;
  }
}

void Worker::Impl::Admit() {
  if (draining_) return;
  // Sessions are all in use: tasks already admitted wait for one; no more now.
  if (envs_ && envs_->full()) return;
  if (clock_->NowNanos() < admit_paused_until_ns_) return;
  if (output_blocked_ > 0) return;  // the output takes no records now: admit nothing more
  const bool batch = pipeline_->run.schedule == config::RunConfig::Schedule::kBatch;
  for (auto& part : partitions_) {
    // Batch-synchronous: new rows only once the last batch has finished
    // (re-admissions of its own tasks still go through).
    const bool new_rows = !batch || part.source->in_flight() == 0;
    PartitionSource::Admission adm;
    while (part.source->Next(&adm, new_rows)) {
      TaskRun run;
      wire::Task& t = run.task;
      t.run_id = config_.run_id;
      t.task_id = adm.task_id;
      t.partition = part.index;
      t.row = adm.row;
      t.trial = adm.trial;
      t.seed = Hash64(config_.run_id + "/" + adm.task_id);
      t.attempt = adm.attempt;
      t.owner = part.owner;
      t.pipeline = pipeline_->name;
      t.pipeline_hash = pipeline_->hash;
      t.step = pipeline_->flow.start;
      t.input.text = adm.row_json;
      t.created_us = clock_->WallMicros();
      metrics_.tasks_admitted.Inc();
      if (!adm.error.ok()) {
        t.status = wire::TaskStatus::kFailed;
        t.reason = "invalid_input";
        t.error = adm.error.message();
        WriteRecord(run);
        continue;
      }
      part.source->SetAdmitTime(adm.task_id, clock_->NowNanos());
      const config::StepConfig* start = pipeline_->Step(t.step);
      run.next_role = start ? QueueOf(*start, t) : t.step;
      const uint64_t id = NewRun(std::move(run));
      // The only worker of its run starts the first step here when it may
      // (InPlace). A task that was being handled when a worker died goes
      // through the broker, whose deliveries count such deaths (OnDelivery).
      if (config_.sole_worker && start && abort_on_input_.empty() && !crash_counts_.count(adm.task_id)) {
        Handling handling(crash_, adm.task_id);
        if (RunInPlace(id, *start)) continue;
      }
      OffloadAndSubmit(id);
    }
  }
}

}  // namespace matrix::worker
