// The step state machine: a delivered task is decoded and checked, its
// role's agent run, the flow's transitions chosen, and the task ended or
// handed on to its next queue.

#include "daemons/agent_worker/worker_impl.h"

#include <algorithm>

#include "common/base/hash.h"
#include "common/base/log.h"

namespace matrix::worker {

using config::RoleType;

void Worker::Impl::OnDelivery(const wire::DeliverItem& item, std::string_view payload) {
  const bool release = item.role.rfind(kReleaseRole, 0) == 0;
  if (draining_ && item.role.rfind("sink:", 0) != 0 && !release) {
    Ack(item.lease, /*requeue=*/true);
    return;
  }
  auto decoded = wire::DecodeTask(payload, config_.max_message_bytes);
  if (!decoded.ok()) {
    Malformed("task under lease " + std::to_string(item.lease) + " dropped: " + decoded.status().message());
    Ack(item.lease);
    return;
  }
  // Should this task crash the process, the next worker learns which one it was.
  Handling handling(crash_, decoded->task_id);
  TaskRun run;
  run.lease = item.lease;
  run.task = std::move(*decoded);
  run.start_us = clock_->WallMicros();
  ++hops_;
  uint64_t id = NewRun(std::move(run));
  TaskRun& r = runs_[id];
  if (item.role.rfind("sink:", 0) == 0) {
    r.sink = true;
    HandleSink(id);
    return;
  }
  if (release) return OnReleaseDelivery(id, item.role == kReleaseRole);
  if (r.task.pipeline_hash != pipeline_->hash) {
    ++refused_;
    refused_mismatch_.Inc();
    LOG_WARN << "refusing task " << r.task.task_id << ": pipeline hash " << Hex64(r.task.pipeline_hash)
             << " is not this worker's " << Hex64(pipeline_->hash);
    FailTask(id, wire::TaskStatus::kFailed, "pipeline_mismatch",
             "task was built for pipeline definition " + Hex64(r.task.pipeline_hash) + ", worker " + identity_ +
                 " runs " + Hex64(pipeline_->hash));
    return;
  }
  // Deaths of the workers that held this step cost the task nothing, unless
  // it was the one being handled when they died (CrashMarker); a bound still
  // ends a task whose workers keep dying around it.
  if (!crash_counts_.empty()) {
    auto c = crash_counts_.find(r.task.task_id);
    if (c != crash_counts_.end() && c->second >= kCrashesPerTask) {
      FailTask(id, wire::TaskStatus::kFailed, "worker_crash",
               "worker processes died " + std::to_string(c->second) +
                   " times while handling this task (step '" + r.task.step + "'); it is not run again");
      return;
    }
  }
  // Fault injection for tests of crash handling: a row holding this text
  // aborts every worker that handles it.
  if (!abort_on_input_.empty() && r.task.input.text.find(abort_on_input_) != std::string::npos) {
    LOG_ERROR << "task " << r.task.task_id << " holds MATRIX_FAULT_ABORT_ON_INPUT; aborting";
    std::abort();
  }
  if (item.deliveries > kMaxFreeDeliveries) {
    ++lost_;
    FailTask(id, wire::TaskStatus::kLost, "max_attempts",
             "step '" + r.task.step + "' was delivered " + std::to_string(item.deliveries) +
                 " times; the workers running it were lost each time");
    return;
  }
  r.step = pipeline_->Step(r.task.step);
  r.role = r.step ? pipeline_->Role(r.step->role) : nullptr;
  r.agent = r.role ? AgentOf(*r.role) : nullptr;
  if (!r.step || !r.role || !r.agent) {
    r.step = nullptr;
    FailTask(id, wire::TaskStatus::kFailed, "unknown_step", "step '" + r.task.step + "' is not in the pipeline");
    return;
  }
  if (r.task.enqueue_us > 0 && r.start_us >= r.task.enqueue_us) {
    RoleMetrics(r.step->role)
        .queue_wait_seconds.Observe(static_cast<double>(r.start_us - r.task.enqueue_us) / 1e6);
  }
  if (pipeline_->run.max_steps_in_place > 0 && RunsInPlace(*r.role) && RoleBusy(r.step->role) >= r.role->concurrency) {
    waiting_[r.step->role].push_back(id);
    ++waiting_count_;
    return;
  }
  BeginStep(id);
}

void Worker::Impl::StartWaiting() {
  if (waiting_count_ == 0) return;
  for (auto& [role_name, queue] : waiting_) {
    const config::RoleConfig* role = pipeline_->Role(role_name);
    while (!queue.empty() && (!role || RoleBusy(role_name) < role->concurrency)) {
      const uint64_t id = queue.front();
      queue.pop_front();
      --waiting_count_;
      auto it = runs_.find(id);
      if (it == runs_.end()) continue;
      Handling handling(crash_, it->second.task.task_id);
      it->second.start_us = clock_->WallMicros();
      BeginStep(id);
    }
  }
}

void Worker::Impl::BeginStep(uint64_t id) {
  TaskRun& r = runs_[id];
  role_in_flight_[r.step->role]++;
  RoleMetrics(r.step->role).in_flight.Inc();
  const StepParts& parts = PartsOf(r.step);
  if ((parts.role | parts.route) & kCtxStored) {
    Fetch(id, [this](uint64_t rid) { StartRole(rid); }, ReadsArchive(r.task, parts.role | parts.route));
  } else {
    StartRole(id);
  }
}

void Worker::Impl::EndStepCount(TaskRun& run) {
  if (run.step) {
    role_in_flight_[run.step->role]--;
    RoleMetrics(run.step->role).in_flight.Dec();
  }
  run.step = nullptr;  // counted once
}

void Worker::Impl::StartRole(uint64_t id) {
  TaskRun& run = runs_[id];
  unsigned parts = PartsOf(run.step).role;
  // An llm role reads the input only through its templates: once they are
  // kept rendered, the input row is not parsed again.
  if (run.role->type == RoleType::kLlm && (parts & kCtxInput) && PromptsKept(*run.role, run.prompts))
    parts &= ~static_cast<unsigned>(kCtxInput);
  const bool expand = run.archive_loaded && (parts & kCtxTurnParts);
  wire::Task full = expand ? HistoryView(run) : wire::Task();
  const wire::Task& view = expand ? full : run.task;
  Json ctx = BuildContext(view, run.resolved, parts);
  StepContext step{id, *run.step, *run.role, run.task, view, run.resolved, ctx, &run.prompts};
  // The agent ends the step (Complete), now or from a callback; `run` may be
  // gone once Run() returns.
  run.agent->Run(step, *this);
}

void Worker::Impl::Complete(uint64_t id, StepOutcome outcome, const TaskEdit& edit) {
  auto it = runs_.find(id);
  if (it == runs_.end()) return;
  if (edit) edit(it->second.task);
  switch (outcome.kind) {
    case StepOutcome::Kind::kContinue: return FinishStep(id);
    case StepOutcome::Kind::kFiltered:
      return FailTask(id, wire::TaskStatus::kFiltered, outcome.reason.empty() ? "filtered" : outcome.reason,
                      outcome.error);
    case StepOutcome::Kind::kFailed: return FailTask(id, wire::TaskStatus::kFailed, outcome.reason, outcome.error);
    case StepOutcome::Kind::kLost: return FailTask(id, wire::TaskStatus::kLost, outcome.reason, outcome.error);
  }
}

void Worker::Impl::CallLlm(uint64_t id, const std::string& model, ChatBody body,
                           std::function<void(llm::ChatResult&)> done) {
  auto it = runs_.find(id);
  if (it == runs_.end()) return;
  if (!llm_) return Complete(id, StepOutcome::Failed("no_model", "pipeline has no models"), nullptr);
  it->second.on_llm = std::move(done);
  llm_->Submit(llm::ChatRequest{id, model, std::move(body.params), it->second.task.task_id, std::move(body.messages)});
}

size_t Worker::Impl::OnLlmResults() {
  std::vector<llm::ChatResult> results;
  if (llm_->Drain(&results) == 0) return 0;
  for (auto& res : results) {
    auto it = runs_.find(res.tag);
    if (it == runs_.end() || !it->second.on_llm) continue;
    TaskRun& run = it->second;
    Handling handling(crash_, run.task.task_id);
    ++llm_calls_;
    llm_attempts_ += std::max(1, res.attempts);
    RecordLlmResult(res, run.role->model);
    // Cancelled calls (shutdown) say nothing about the endpoints.
    if (res.status.code() != StatusCode::kCancelled) NoteLlmOutcome(res.status.ok());
    if (!res.status.ok()) {
      ++llm_errors_;
    } else {
      prompt_tokens_ += res.prompt_tokens;
      completion_tokens_ += res.completion_tokens;
      auto& by_model = model_tokens_[run.role->model];
      by_model.first += res.prompt_tokens;
      by_model.second += res.completion_tokens;
    }
    auto done = std::move(run.on_llm);
    run.on_llm = nullptr;
    done(res);
  }
  return results.size();
}

void Worker::Impl::FinishStep(uint64_t id) {
  TaskRun& run = runs_[id];
  ++steps_run_;
  wire::Task& task = run.task;
  task.counters["steps"]++;
  task.counters[run.step->name]++;
  wire::Span span;
  span.step = run.step->name;
  span.role = run.step->role;
  span.worker = identity_;
  span.enqueue_us = task.enqueue_us;
  span.start_us = run.start_us;
  span.end_us = clock_->WallMicros();
  span.attempt = static_cast<int32_t>(task.attempt);
  if (run.role->type == RoleType::kLlm && !task.history.empty()) {
    span.prompt_tokens = task.history.back().prompt_tokens;
    span.completion_tokens = task.history.back().completion_tokens;
    span.endpoint = task.history.back().endpoint;
  }
  RoleMetrics(span.role).step_duration_seconds.Observe(static_cast<double>(span.end_us - span.start_us) / 1e6);
  task.spans.push_back(std::move(span));

  if (OverBudget(id)) return;
  // A join step goes on with the `next` of its fan-out step.
  const config::StepConfig* fanout = FanoutOfJoin(run.step);
  RouteAndSubmit(id, fanout ? *fanout : *run.step);
}

void Worker::Impl::RouteAndSubmit(uint64_t id, const config::StepConfig& routing) {
  TaskRun& run = runs_[id];
  wire::Task& task = run.task;
  unsigned route_parts = PartsOf(&routing).route;
  Json route_ctx = Json::object();
  if (run.archive_loaded && (route_parts & kCtxTurnParts)) {
    route_ctx = BuildContext(HistoryView(run), run.resolved, route_parts);
  } else if (route_parts) {
    route_ctx = BuildContext(task, run.resolved, route_parts);
  }
  RouteDecision next = Route(routing, task, route_ctx);
  if (!next.status.ok()) {
    return FailTask(id, wire::TaskStatus::kFailed, next.reason,
                    "step '" + routing.name + "': " + next.status.message());
  }
  if (next.target == config::kTargetJoin) {
    // The branch is over; its owner hands the outcome to the waiting parent.
    if (task.branch) return FailTask(id, wire::TaskStatus::kDone, next.reason.empty() ? "join" : next.reason, "");
    return FailTask(id, wire::TaskStatus::kFailed, "no_transition",
                    "step '" + routing.name + "' went to `join` outside a fan-out branch");
  }
  if (IsTerminal(next.target)) {
    wire::TaskStatus status = next.target == "done"       ? wire::TaskStatus::kDone
                              : next.target == "filtered" ? wire::TaskStatus::kFiltered
                                                          : wire::TaskStatus::kFailed;
    return FailTask(id, status, next.reason.empty() ? next.target : next.reason, "");
  }
  if (task.counters["steps"] >= pipeline_->flow.max_steps) {
    return FailTask(id, wire::TaskStatus::kFailed, "max_steps",
                    "task ran " + std::to_string(task.counters["steps"]) + " steps (flow.max_steps)");
  }
  const config::StepConfig* step = pipeline_->Step(next.target);
  task.step = next.target;
  if (step && RunInPlace(id, *step)) return;
  run.next_role = step ? QueueOf(*step, task) : next.target;
  OffloadAndSubmit(id);
}

bool Worker::Impl::RunsInPlace(const config::RoleConfig& role) const {
  const Agent* agent = AgentOf(role);
  return agent && (agent->EndsInRun(role) || (role.type == RoleType::kLlm && agent->EnvRole(role).empty()));
}

int64_t Worker::Impl::RoleBusy(const std::string& role, const TaskRun* leaving) const {
  auto in_flight = role_in_flight_.find(role);
  int64_t busy = in_flight == role_in_flight_.end() ? 0 : in_flight->second;
  if (leaving && leaving->step && leaving->step->role == role) --busy;
  return busy;
}

bool Worker::Impl::InPlace(const TaskRun& run, const config::StepConfig& step) {
  if (draining_ || run.steps_in_place >= pipeline_->run.max_steps_in_place || in_place_depth_ >= kMaxLocalChain)
    return false;
  const config::RoleConfig* role = pipeline_->Role(step.role);
  if (!role || !RunsInPlace(*role) || FanoutOfJoin(&step) != nullptr) return false;
  if (std::find(served_roles_.begin(), served_roles_.end(), step.role) == served_roles_.end()) return false;
  if (QueueOf(step, run.task) != step.role) return false;  // bound elsewhere, or a fan-out
  // Delivered steps waiting for the role go first.
  auto waiting = waiting_.find(step.role);
  if (waiting != waiting_.end() && !waiting->second.empty()) return false;
  return RoleBusy(step.role, &run) < role->concurrency;
}

bool Worker::Impl::RunInPlace(uint64_t id, const config::StepConfig& step) {
  TaskRun& run = runs_[id];
  if (!InPlace(run, step)) return false;
  // The step before ends here and this one starts at once: no queue, no
  // hop, the lease stays the delivery's.
  EndStepCount(run);
  ++run.steps_in_place;
  run.step = &step;
  run.role = pipeline_->Role(step.role);
  run.agent = AgentOf(*run.role);
  run.start_us = clock_->WallMicros();
  run.task.enqueue_us = run.start_us;
  // A local step ends inside BeginStep, and its successor may start inside
  // that: the depth of that nesting is bounded.
  ++in_place_depth_;
  BeginStep(id);
  --in_place_depth_;
  return true;
}

void Worker::Impl::FailTask(uint64_t id, wire::TaskStatus status, const std::string& reason,
                            const std::string& error) {
  TaskRun& run = runs_[id];
  run.task.status = status;
  run.task.reason = reason;
  run.task.error = error;
  run.next_role = "sink:" + run.task.owner;
  std::string holder = ReleaseEnvs(run.task);
  if (!holder.empty()) run.next_role = StickyRole(kReleaseRole, holder);
  // This worker owns the task's partition: its record is written here, with
  // no hop to this worker's own sink.
  if (holder.empty() && !run.task.branch && pipeline_->run.max_steps_in_place > 0 && FindPartition(run.task.owner)) {
    EndStepCount(run);
    run.sink = true;
    return HandleSink(id);
  }
  OffloadAndSubmit(id);
}

std::string Worker::Impl::ReleaseEnvs(wire::Task& task) {
  std::string elsewhere;
  auto& leases = task.leases;
  for (auto it = leases.begin(); it != leases.end();) {
    if (it->kind.rfind(kEnvLeasePrefix, 0) != 0) {
      ++it;
      continue;
    }
    if (it->holder == identity_) {
      if (envs_) envs_->Release(it->id);
      it = leases.erase(it);
      continue;
    }
    if (elsewhere.empty()) elsewhere = it->holder;
    ++it;
  }
  return elsewhere;
}

void Worker::Impl::OnReleaseDelivery(uint64_t id, bool holder_gone) {
  TaskRun& run = runs_[id];
  std::string holder = ReleaseEnvs(run.task);
  if (holder_gone && !holder.empty()) {
    // Its sessions went with their worker: nothing is left to close.
    auto& leases = run.task.leases;
    leases.erase(std::remove_if(leases.begin(), leases.end(),
                                [&](const wire::ResourceLease& l) { return l.holder == holder; }),
                 leases.end());
    holder = ReleaseEnvs(run.task);
  }
  run.next_role = holder.empty() ? "sink:" + run.task.owner : StickyRole(kReleaseRole, holder);
  OffloadAndSubmit(id);
}

std::string Worker::Impl::QueueFor(const config::StepConfig& step, const wire::Task& task) const {
  const config::RoleConfig* role = pipeline_->Role(step.role);
  const Agent* agent = role ? AgentOf(*role) : nullptr;
  if (!agent) return step.role;
  const std::string env = agent->EnvRole(*role);
  if (env.empty()) return step.role;
  const wire::ResourceLease* lease = FindEnvLease(task, env);
  return lease ? StickyRole(step.role, lease->holder) : step.role;
}

void Worker::Impl::SubmitRun(uint64_t id) {
  auto it = runs_.find(id);
  TaskRun& run = it->second;
  run.task.enqueue_us = clock_->WallMicros();
  run.task.hops++;
  submit_batch_.items.push_back({run.lease, run.next_role, run.task.task_id, false, true});
  // Sized like the largest batch so far: appending never reallocates (copies).
  if (submit_bundle_.empty()) submit_bundle_.reserve(bundle_capacity_);
  const size_t bytes = wire::AppendPackedTask(run.task, &submit_bundle_);
  bundle_capacity_ = std::max(bundle_capacity_, submit_bundle_.size());
  metrics_.hop_bytes.Observe(static_cast<double>(bytes));
  runs_.erase(it);
  if (submit_batch_.items.size() >= 256) FlushSubmits();
}

}  // namespace matrix::worker
