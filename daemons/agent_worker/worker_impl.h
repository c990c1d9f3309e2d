// Worker::Impl, the worker's state and its event handlers; private to
// matrix_agent_worker. Its methods live in one file per concern:
//
//   worker.cc           set-up, the event loop, the broker session
//   step_machine.cc     a delivered task's step: decode, run the role's agent,
//                       evaluate the flow, end the task or hand it on
//   object_resolver.cc  stored content: fetch what a step reads, offload large
//                       content, archive old history, free what a task held
//   partition_owner.cc  the partitions this worker owns: admission of rows,
//                       the sink (records), re-admission of lost tasks
//   fan_out.cc          fan-out steps of owned tasks: branches started, the
//                       parent kept until they report, then resumed
//   progress.cc         the progress file and the Prometheus metrics
//
// The LLM client and the store client come in through interfaces
// (llm::ChatService, store::ObjectStore): real ones from the configuration,
// or fakes given to Worker::Create by tests.
#pragma once

#include <unistd.h>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/event_loop.h"
#include "common/base/log_limiter.h"
#include "common/base/zstd_lines.h"
#include "common/config/pipeline.h"
#include "common/llm/llm_client.h"
#include "common/metrics/metrics.h"
#include "common/metrics/worker_metrics.h"
#include "common/store/store_client.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "daemons/agent_worker/agent.h"
#include "daemons/agent_worker/agents.h"
#include "daemons/agent_worker/crash_marker.h"
#include "daemons/agent_worker/env_pool.h"
#include "daemons/agent_worker/segment_cache.h"
#include "daemons/agent_worker/sink.h"
#include "daemons/agent_worker/source.h"
#include "daemons/agent_worker/task_view.h"
#include "daemons/agent_worker/worker.h"

namespace matrix::worker {

class Worker::Impl final : public AgentHost {
 public:
  Impl(WorkerConfig config, std::shared_ptr<const config::Pipeline> pipeline, transport::Context* ctx,
       const Clock* clock, WorkerServices services)
      : config_(std::move(config)),
        pipeline_(std::move(pipeline)),
        ctx_(ctx),
        clock_(clock),
        store_(std::move(services.store)),
        llm_(std::move(services.llm)) {
    identity_ = config_.worker_id + "." + std::to_string(::getpid());
    if (config_.run_id.empty()) config_.run_id = pipeline_->name;
  }

  Status Init();
  Status Run();
  // Any thread: the loop starts draining in its next turn.
  void Stop() {
    stop_requested_ = true;
    if (loop_) loop_->Wake();
  }
  void HandleBrokerMessage(std::vector<std::string>& frames) {
    OnBrokerMessage(frames);
    FlushSubmits();
  }

  // AgentHost
  const Clock& clock() const override { return *clock_; }
  const std::string& identity() const override { return identity_; }
  const config::Pipeline& pipeline() const override { return *pipeline_; }
  void Complete(uint64_t run_id, StepOutcome outcome, const TaskEdit& edit) override;
  void CallLlm(uint64_t run_id, const std::string& model, ChatBody body,
               std::function<void(llm::ChatResult&)> done) override;
  EnvPool* envs() override { return envs_.get(); }

 private:
  struct Partition {
    uint32_t index = 0;
    bool marked_finished = false;  // marker written to finished_dir
    std::string owner;
    std::unique_ptr<PartitionSource> source;
    std::unique_ptr<PartitionSink> sink;
    // run.records: done: the short lines of tasks that did not end done.
    std::unique_ptr<PartitionSink> dropped;
    bool Written(const std::string& task_id) const {
      return sink->Written(task_id) || (dropped && dropped->Written(task_id));
    }
    int64_t WrittenCount() const {
      return static_cast<int64_t>(sink->written().size() + (dropped ? dropped->written().size() : 0));
    }
    // Records the output did not take (full disk, I/O error), oldest first:
    // their tasks stay unacknowledged until a retry writes them.
    struct Blocked {
      uint64_t lease = 0;
      wire::Task full;
      std::string line;
      bool dropped = false;  // goes to the partition's `dropped` file
    };
    std::deque<Blocked> blocked;
    // From a predecessor of this worker in the same run (InheritProgress).
    int64_t inherited_preexisting = -1;
    std::map<std::string, int64_t> inherited_counts;
  };
  // One task being worked on: delivered under a lease, or newly admitted.
  struct TaskRun {
    uint64_t lease = 0;  // 0: admitted here, nothing to acknowledge
    wire::Task task;
    Resolved resolved;
    const config::StepConfig* step = nullptr;
    const config::RoleConfig* role = nullptr;
    const Agent* agent = nullptr;
    std::function<void(llm::ChatResult&)> on_llm;
    bool sink = false;
    // The archived segments of history and spans, once fetched (Fetch()).
    bool archive_loaded = false;
    std::vector<wire::Turn> archived_turns;
    std::vector<wire::Span> archived_spans;
    std::vector<wire::ObjectRef> segments;  // every archived segment, oldest first
    // While LoadArchive() runs: segments read so far, by object id.
    std::unordered_map<uint64_t, std::pair<wire::ObjectRef, wire::Task>> loading_segments;
    int64_t start_us = 0;
    int steps_in_place = 0;  // steps run right after another one (RunInPlace)
    PromptMemo prompts;      // prompts rendered from the input alone, for the next steps
    int pending_puts = 0;
    std::string next_role;
  };

  // ---- worker.cc: the loop and the broker session.
  Status ConnectStore();     // the store client of config_ (this node's matrix-store)
  Status CreateLlmClient();  // an HTTP client with one pool per model; none without models
  void OnBrokerMessage(std::vector<std::string>& frames);
  void Register(bool draining);
  // `bundle`: the control message's task payloads, packed (wire::PackPayloads).
  void Send(const wire::Control& control, std::string bundle = "");
  void FlushSubmits();
  void Ack(uint64_t lease, bool requeue = false);
  void Malformed(const std::string& what);  // counts it; logs it at most every 10 s
  void RefreshModelEndpoints();
  // Each turn of the loop before it waits: admission, submissions, the
  // store's and the LLM client's due work, heartbeats, progress, the drain's
  // end. Returns how long the loop may wait, ns.
  int64_t Turn();
  void BeginDrain(int sig);  // a stop signal (0: Stop()); a second one exits at once
  void WatchStoreSockets();  // (re)watches store_->sockets() on loop_

  // ---- step_machine.cc: one step of a delivered task.
  void OnDelivery(const wire::DeliverItem& item, std::string_view payload);
  size_t OnLlmResults();  // returns how many answers it handled
  // Counts the run's step (run.step, role, agent set) in flight, fetches
  // what it reads, then StartRole().
  void BeginStep(uint64_t id);
  void StartRole(uint64_t id);
  // The run's step is no longer in flight (once; run.step is cleared).
  void EndStepCount(TaskRun& run);
  void FinishStep(uint64_t id);
  // Chooses the task's next step by `routing`'s transitions (and `set`),
  // then ends the task or hands it on.
  void RouteAndSubmit(uint64_t id, const config::StepConfig& routing);
  // Runs `step` here and now, without a hop through the broker, when
  // InPlace() allows it; false when the task must go through the broker.
  bool RunInPlace(uint64_t id, const config::StepConfig& step);
  // Whether this worker may run `step` of `run`'s task in place: it serves
  // the step's role, the role has room under its concurrency here, the
  // step is local or an LLM step without tools (nothing bound to another
  // worker: no environment session, fan-out or join), the run has not used
  // run.max_steps_in_place, and fewer than kMaxLocalChain steps run nested
  // (local steps end inside the step before them: the stack stays shallow).
  bool InPlace(const TaskRun& run, const config::StepConfig& step);
  static constexpr int kMaxLocalChain = 8;
  int in_place_depth_ = 0;
  // Whether steps of `role` may run in place: local ones and llm ones
  // without tools (nothing bound to a worker's environment).
  bool RunsInPlace(const config::RoleConfig& role) const;
  // Steps of `role` in flight here, the step `run` is leaving excluded.
  int64_t RoleBusy(const std::string& role, const TaskRun* leaving = nullptr) const;
  // A delivered step whose role is at its concurrency here waits: the
  // broker's credit does not see the steps run in place that took the room.
  // They start oldest first as steps of the role end (StartWaiting).
  std::unordered_map<std::string, std::deque<uint64_t>> waiting_;
  size_t waiting_count_ = 0;
  void StartWaiting();
  void FailTask(uint64_t id, wire::TaskStatus status, const std::string& reason, const std::string& error);
  // Ends the task's environment sessions held here; returns the worker
  // holding another one ("" when none), where the task goes next.
  std::string ReleaseEnvs(wire::Task& task);
  void OnReleaseDelivery(uint64_t id, bool holder_gone);
  // The queue of `step` for this task: bound to the worker holding the
  // task's environment session when the step's agent needs it.
  std::string QueueFor(const config::StepConfig& step, const wire::Task& task) const;
  void SubmitRun(uint64_t id);
  const Agent* AgentOf(const config::RoleConfig& role) const {
    return AgentRegistry::Builtin().Find(config::RoleTypeName(role.type));
  }
  struct StepParts {
    unsigned role = 0;
    unsigned route = 0;
  };
  // Context parts per step, computed once.
  const StepParts& PartsOf(const config::StepConfig* step) {
    auto it = parts_.find(step);
    if (it != parts_.end()) return it->second;
    StepParts p;
    if (const config::RoleConfig* role = pipeline_->Role(step->role))
      if (const Agent* agent = AgentOf(*role)) p.role = agent->ContextParts(*role);
    p.route = RouteContextParts(*step);
    return parts_.emplace(step, p).first->second;
  }
  uint64_t NewRun(TaskRun run) {
    uint64_t id = next_run_++;
    runs_.emplace(id, std::move(run));
    return id;
  }

  // ---- object_resolver.cc: stored content of a task.
  // With whole = false the archived history is not loaded: only the input
  // and the turns the task carries are resolved.
  void Fetch(uint64_t id, std::function<void(uint64_t)> then, bool whole = true);
  // Reads the archive segments `wanted` and every older one they list, and
  // puts their turns and spans (oldest first) in front of the run's history;
  // `then` gets the first error, if any.
  void LoadArchive(uint64_t id, std::vector<wire::ObjectRef> wanted,
                   std::function<void(uint64_t, const Status&)> then);
  // The segments that those in `read` list and the run has not read yet.
  static std::vector<wire::ObjectRef> OlderSegments(const TaskRun& r, const std::vector<wire::ObjectRef>& read);
  // Puts the segments read into the run's archive, oldest first; then `then`.
  void PlaceArchive(uint64_t id, const std::function<void(uint64_t, const Status&)>& then);
  void OffloadAndSubmit(uint64_t id);
  void ArchiveAndSubmit(uint64_t id);
  // The task with its archived history and spans put back in front.
  static wire::Task Expanded(const TaskRun& run);
  // The same without spans (no step reads them): what a step's context and
  // agent see.
  static wire::Task HistoryView(TaskRun& run);
  // Puts the run's archived turns (and spans, when asked) in front of `task`'s.
  static void PrependArchive(const TaskRun& run, bool with_spans, wire::Task* task);
  void FreeRefs(const wire::Task& task);
  // The encoded segment of a stored (possibly zstd-compressed) one; *out
  // stays empty when `stored` is not compressed.
  Status InflateSegment(const std::string& stored, std::string* out);

  // ---- partition_owner.cc: admission, records, re-admission.
  Partition* FindPartition(const std::string& owner);
  void HandleSink(uint64_t id);
  void WriteRecord(TaskRun& run);
  // Writes one record, acknowledges its task and frees its objects; false
  // (and the output marked blocked) when the file did not take it.
  bool TryWriteRecord(Partition& part, Partition::Blocked& record);
  void RetryBlockedRecords();  // when the back-off allows, in order
  void Admit();
  void NoteLlmOutcome(bool ok);
  // Admits a lost task again, or writes it as lost once max_attempts is used.
  // `charge`: the task may be at fault (no progress); infrastructure losses are free.
  void Readmit(Partition& part, const std::string& task_id, const std::string& why, bool charge);
  void ReadmitAll(const std::string& why);
  void ReadmitStale();

  // ---- fan_out.cc: fan-out steps, at the task's owner.
  struct BranchResult {
    bool ok = false;  // ended done (at `join` or done)
    Json summary;     // {index, task_id, status, reason, error, vars, value, score, tokens}
    std::vector<wire::Turn> turns;
    std::vector<wire::Span> spans;
  };
  struct Join {
    wire::Task parent;
    const config::StepConfig* fanout = nullptr;
    std::vector<std::optional<BranchResult>> results;
    size_t ended = 0, ended_ok = 0;
    int64_t deadline_ns = 0;  // 0: none
  };
  void StartFanout(uint64_t id);     // a running task at its owner: start its branches
  void OnBranchResult(uint64_t id);  // an ended branch at its owner
  void ResumeJoin(const std::string& key, const char* why);
  void CheckJoinDeadlines();
  void DropJoinsOf(const std::string& task_id);  // the task is admitted again
  // The fan-out step whose join `step` is; nullptr when none.
  const config::StepConfig* FanoutOfJoin(const config::StepConfig* step) const;
  // The queue of `step` (QueueFor), or the owner's sink for a fan-out step.
  std::string QueueOf(const config::StepConfig& step, const wire::Task& task) const;
  // The task's token budget: its branch share, or flow.max_tokens; 0 = none.
  int64_t TokenLimit(const wire::Task& task) const;
  // Ends the task (token_budget) when it used more than its budget.
  bool OverBudget(uint64_t id);

  // ---- progress.cc: progress file and metrics.
  void InheritProgress();
  void WriteProgress(bool final);
  // Labelled series resolved on first use and kept.
  const metrics::WorkerRoleMetrics& RoleMetrics(const std::string& role);
  const metrics::WorkerLlmEndpointMetrics& LlmEndpointMetrics(const std::string& model,
                                                             const std::string& endpoint);
  void RecordLlmResult(const llm::ChatResult& res, const std::string& model);
  void RecordWritten(wire::TaskStatus status);
  // Adds what the store client counted since the last call.
  void SyncStoreMetrics();
  // Adds what the environment pool counted since the last call.
  void SyncEnvMetrics();

  // ---- State.
  WorkerConfig config_;
  std::shared_ptr<const config::Pipeline> pipeline_;
  transport::Context* ctx_;
  const Clock* clock_;
  std::string identity_;
  std::string broker_id_;  // of the broker that acknowledged our registration
  // The worker's one event loop: the broker's and the stores' sockets, the
  // LLM client's sockets, environment pipes and the stop signal. Declared
  // before what watches it, so it outlives them.
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<transport::Socket> broker_;
  std::unique_ptr<store::ObjectStore> store_;
  std::unique_ptr<llm::ChatService> llm_;
  std::unique_ptr<EnvPool> envs_;
  std::string env_root_;
  std::vector<Partition> partitions_;
  std::vector<std::string> served_roles_;

  std::unordered_map<uint64_t, TaskRun> runs_;
  ZstdFrameWriter segment_zstd_{-3};  // archived segments, compressed (a fast level)
  SegmentCache segment_cache_{16 << 20};  // decoded segments this worker archived or read
  // Parents waiting for their branches, by join key (fan_out.cc).
  std::map<std::string, Join> joins_;
  std::unordered_map<const config::StepConfig*, const config::StepConfig*> join_of_;  // join step -> fan-out (Init)
  int64_t branches_started_ = 0, branches_dropped_ = 0;
  std::unordered_map<const config::StepConfig*, StepParts> parts_;
  uint64_t next_run_ = 1;
  wire::SubmitMsg submit_batch_;
  std::string submit_bundle_;  // payloads of submit_batch_, packed
  size_t bundle_capacity_ = 0;

  std::vector<int> store_fds_;     // the store sockets watched on loop_
  uint64_t store_generation_ = 0;  // store_->sockets_generation() they came from
  std::atomic<bool> stop_requested_{false};
  bool draining_ = false;
  int64_t drain_deadline_ns_ = 0;
  int64_t last_send_ns_ = 0;
  int64_t last_recv_ns_ = 0;
  int64_t last_progress_ns_ = 0;
  int64_t last_env_tick_ns_ = 0;
  int64_t started_us_ = 0;

  // Which task this process handles now, and how often each task was being
  // handled when a worker of this run died.
  CrashMarker crash_;
  std::map<std::string, int> crash_counts_;
  std::string abort_on_input_;  // $MATRIX_FAULT_ABORT_ON_INPUT (tests only)
  static constexpr int kCrashesPerTask = 2;           // deaths while handling it before a task fails
  static constexpr uint32_t kMaxFreeDeliveries = 20;  // redeliveries of one step before it is lost

  // Output blocked (full disk, I/O error): records waiting in every
  // partition's `blocked`, why, since when, and the retry back-off.
  int64_t output_blocked_ = 0;
  std::string output_error_;
  int64_t output_blocked_since_ns_ = 0, output_retry_ns_ = 0;
  double output_backoff_s_ = 1;

  // Error-rate guard (NoteLlmOutcome): recent call outcomes and the pause.
  std::deque<bool> llm_window_;
  size_t llm_window_errors_ = 0;
  int64_t admit_paused_until_ns_ = 0;
  int admit_pause_s_ = 0;
  int64_t admission_pauses_ = 0;

  // Counters reported in the progress file.
  int64_t refused_ = 0, invalid_ = 0, steps_run_ = 0, llm_calls_ = 0, llm_errors_ = 0;
  int64_t llm_attempts_ = 0;  // HTTP attempts of the calls (retries included)
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0, duplicates_ = 0, lost_ = 0;
  int64_t offloaded_ = 0, hops_ = 0, archived_segments_ = 0;
  std::map<std::string, int64_t> role_in_flight_;
  std::map<std::string, std::pair<int64_t, int64_t>> model_tokens_;  // model -> (prompt, completion)

  // Metrics. The registry precedes every handle into it and the server
  // follows them, so the server stops first and the registry goes last.
  metrics::MetricsRegistry metrics_registry_;
  metrics::WorkerMetrics metrics_{metrics_registry_};
  std::unordered_map<std::string, metrics::WorkerRoleMetrics> role_metrics_;
  std::map<std::pair<std::string, std::string>, metrics::WorkerLlmEndpointMetrics> llm_endpoint_metrics_;
  std::unordered_map<std::string, metrics::WorkerLlmModelMetrics> llm_model_metrics_;
  metrics::Counter refused_mismatch_, refused_malformed_;
  PeerLogLimiter malformed_log_;
  store::ObjectStoreStats store_synced_;  // store client counts already in the metrics
  EnvPool::Stats env_synced_;             // environment pool counts already in the metrics
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  // Models fed by <models_dir>: their fixed endpoints and the list last set.
  std::map<std::string, std::vector<std::string>> static_endpoints_;
  std::map<std::string, std::vector<std::string>> current_endpoints_;
};

}  // namespace matrix::worker
