#include "daemons/agent_worker/worker.h"

#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <unordered_map>

#include "common/base/files.h"
#include "common/base/strings.h"
#include "common/base/hash.h"
#include "common/base/log.h"
#include "common/base/log_limiter.h"
#include "common/base/signals.h"
#include "common/config/pipeline.h"
#include "common/llm/endpoint_directory.h"
#include "common/llm/llm_client.h"
#include "common/metrics/metrics.h"
#include "common/metrics/worker_metrics.h"
#include "common/store/store_client.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "daemons/agent_worker/agents.h"
#include "daemons/agent_worker/crash_marker.h"
#include "daemons/agent_worker/env_pool.h"
#include "daemons/agent_worker/sink.h"
#include "daemons/agent_worker/source.h"
#include "daemons/agent_worker/task_view.h"

namespace matrix::worker {

using config::RoleType;

class Worker::Impl final : public AgentHost {
 public:
  Impl(WorkerConfig config, std::shared_ptr<const config::Pipeline> pipeline, transport::Context* ctx,
       const Clock* clock)
      : config_(std::move(config)), pipeline_(std::move(pipeline)), ctx_(ctx), clock_(clock) {
    identity_ = config_.worker_id + "." + std::to_string(::getpid());
    if (config_.run_id.empty()) config_.run_id = pipeline_->name;
  }

  Status Init();
  Status Run();
  void Stop() { stop_requested_ = true; }
  void HandleBrokerMessage(std::vector<std::string>& frames) {
    OnBrokerMessage(frames);
    FlushSubmits();
  }

  // AgentHost
  const Clock& clock() const override { return *clock_; }
  const std::string& identity() const override { return identity_; }
  const config::Pipeline& pipeline() const override { return *pipeline_; }
  void Complete(uint64_t run_id, StepOutcome outcome, const TaskEdit& edit) override;
  void CallLlm(uint64_t run_id, const std::string& model, Json body,
               std::function<void(llm::ChatResult&)> done) override;
  EnvPool* envs() override { return envs_.get(); }

 private:
  struct Partition {
    uint32_t index = 0;
    bool marked_finished = false;  // marker written to finished_dir
    std::string owner;
    std::unique_ptr<PartitionSource> source;
    std::unique_ptr<PartitionSink> sink;
    // Records the output did not take (full disk, I/O error), oldest first:
    // their tasks stay unacknowledged until a retry writes them.
    struct Blocked {
      uint64_t lease = 0;
      wire::Task full;
      std::string line;
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
    int64_t start_us = 0;
    int pending_puts = 0;
    std::string next_role;
  };

  // Event handlers.
  void OnBrokerMessage(std::vector<std::string>& frames);
  void OnDelivery(const wire::DeliverItem& item, std::string_view payload);
  void OnLlmResults();
  // Task pipeline.
  void Fetch(uint64_t id, std::function<void(uint64_t)> then);
  void StartRole(uint64_t id);
  void FinishStep(uint64_t id);
  void FailTask(uint64_t id, wire::TaskStatus status, const std::string& reason, const std::string& error);
  // Ends the task's environment sessions held here; returns the worker
  // holding another one ("" when none), where the task goes next.
  std::string ReleaseEnvs(wire::Task& task);
  void OnReleaseDelivery(uint64_t id, bool holder_gone);
  // The queue of `step` for this task: bound to the worker holding the
  // task's environment session when the step's agent needs it.
  std::string QueueFor(const config::StepConfig& step, const wire::Task& task) const;
  const Agent* AgentOf(const config::RoleConfig& role) const {
    return AgentRegistry::Builtin().Find(config::RoleTypeName(role.type));
  }
  void OffloadAndSubmit(uint64_t id);
  void ArchiveAndSubmit(uint64_t id);
  // The task with its archived history and spans put back in front.
  static wire::Task Expanded(const TaskRun& run);
  void SubmitRun(uint64_t id);
  void Ack(uint64_t lease, bool requeue = false);
  void FreeRefs(const wire::Task& task);
  // Sources and sinks.
  void HandleSink(uint64_t id);
  void InheritProgress();
  void WriteRecord(TaskRun& run);
  // Which task this process handles now, and how often each task was being
  // handled when a worker of this run died.
  CrashMarker crash_;
  std::map<std::string, int> crash_counts_;
  std::string abort_on_input_;  // $MATRIX_FAULT_ABORT_ON_INPUT (tests only)
  static constexpr int kCrashesPerTask = 2;         // deaths while handling it before a task fails
  static constexpr uint32_t kMaxFreeDeliveries = 20;  // redeliveries of one step before it is lost
  // Writes one record, acknowledges its task and frees its objects; false
  // (and the output marked blocked) when the file did not take it.
  bool TryWriteRecord(Partition& part, Partition::Blocked& record);
  void RetryBlockedRecords();  // when the back-off allows, in order
  int64_t output_blocked_ = 0;  // records waiting in every partition's `blocked`
  std::string output_error_;    // why the output is blocked; "" when it is not
  int64_t output_blocked_since_ns_ = 0, output_retry_ns_ = 0;
  double output_backoff_s_ = 1;
  void Admit();
  void NoteLlmOutcome(bool ok);
  // Admits a lost task again, or writes it as lost once max_attempts is used.
  // `charge`: the task may be at fault (no progress); infrastructure losses are free.
  void Readmit(Partition& part, const std::string& task_id, const std::string& why, bool charge);
  void ReadmitAll(const std::string& why);
  void ReadmitStale();
  Partition* FindPartition(const std::string& owner);
  // Broker session.
  void Register(bool draining);
  // `bundle`: the control message's task payloads, packed (wire::PackPayloads).
  void Send(const wire::Control& control, std::string bundle = "");
  void FlushSubmits();
  void WriteProgress(bool final);
  // Metrics: labelled series resolved on first use and kept.
  const metrics::WorkerRoleMetrics& RoleMetrics(const std::string& role);
  const metrics::WorkerLlmEndpointMetrics& LlmEndpointMetrics(const std::string& model,
                                                             const std::string& endpoint);
  void RecordLlmResult(const llm::ChatResult& res, const std::string& model);
  void RecordWritten(wire::TaskStatus status);
  // Adds what the store client counted since the last call.
  void SyncStoreMetrics();
  // Adds what the environment pool counted since the last call.
  void SyncEnvMetrics();
  EnvPool::Stats env_synced_;

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

  WorkerConfig config_;
  std::shared_ptr<const config::Pipeline> pipeline_;
  transport::Context* ctx_;
  const Clock* clock_;
  std::string identity_;
  std::string broker_id_;  // of the broker that acknowledged our registration
  // Error-rate guard (NoteLlmOutcome): recent call outcomes and the pause.
  std::deque<bool> llm_window_;
  size_t llm_window_errors_ = 0;
  int64_t admit_paused_until_ns_ = 0;
  int admit_pause_s_ = 0;
  int64_t admission_pauses_ = 0;
  std::unique_ptr<transport::Socket> broker_;
  std::unique_ptr<store::StoreClient> store_;
  std::unique_ptr<llm::LlmClient> llm_;
  std::unique_ptr<EnvPool> envs_;
  std::string env_root_;
  std::vector<Partition> partitions_;
  std::vector<std::string> served_roles_;

  std::unordered_map<uint64_t, TaskRun> runs_;
  std::unordered_map<const config::StepConfig*, StepParts> parts_;
  uint64_t next_run_ = 1;
  wire::SubmitMsg submit_batch_;
  std::string submit_bundle_;  // payloads of submit_batch_, packed
  size_t bundle_capacity_ = 0;

  std::atomic<bool> stop_requested_{false};
  bool draining_ = false;
  int64_t drain_deadline_ns_ = 0;
  int64_t last_send_ns_ = 0;
  int64_t last_recv_ns_ = 0;
  int64_t last_progress_ns_ = 0;
  int64_t last_env_tick_ns_ = 0;
  int64_t started_us_ = 0;

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
  void Malformed(const std::string& what);  // counts it; logs it at most every 10 s
  store::StoreClient::Stats store_synced_;  // store client counts already in the metrics
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  // Models fed by <models_dir>: their fixed endpoints and the list last set.
  std::map<std::string, std::vector<std::string>> static_endpoints_;
  std::map<std::string, std::vector<std::string>> current_endpoints_;
  void RefreshModelEndpoints();
};

Status Worker::Impl::Init() {
  started_us_ = clock_->WallMicros();
  if (!config_.run_dir.empty()) {
    const std::string dir = config_.run_dir + "/progress";
    MATRIX_ASSIGN_OR_RETURN(crash_, CrashMarker::Open(dir, config_.worker_id));
    if (!crash_.inherited().empty())
      LOG_WARN << "the previous " << config_.worker_id << " died while handling task " << crash_.inherited();
    crash_counts_ = CrashMarker::ReadCrashes(dir);
  }
  if (const char* fault = std::getenv("MATRIX_FAULT_ABORT_ON_INPUT")) abort_on_input_ = fault;
  transport::SocketOptions opts;
  opts.identity = identity_;
  opts.max_message_bytes = static_cast<int64_t>(config_.max_message_bytes);
  if (config_.keys) opts = transport::CurveClientOptions(*config_.keys, opts);
  MATRIX_ASSIGN_OR_RETURN(broker_, transport::Socket::Connect(*ctx_, transport::Socket::Kind::kDealer,
                                                             config_.broker_endpoint, opts));
  store::StoreClient::Options store_opts;
  if (config_.keys) store_opts.socket_options = transport::CurveClientOptions(*config_.keys);
  if (!config_.nodes_dir.empty()) {
    // Objects of other nodes: their store's endpoint file in the run directory.
    store_opts.resolve_node = [dir = config_.nodes_dir](const std::string& node) {
      if (node.empty() || node.find('/') != std::string::npos || node[0] == '.') return std::string();
      auto ep = ReadFile(dir + "/" + node + "/endpoints/store");
      return ep.ok() ? Trim(*ep) : std::string();
    };
  }
  MATRIX_ASSIGN_OR_RETURN(store_, store::StoreClient::Create(*ctx_, config_.store_endpoint, config_.node, clock_,
                                                             store_opts));

  std::vector<llm::PoolConfig> pools;
  for (const auto& [name, model] : pipeline_->models) {
    llm::PoolConfig p;
    p.name = name;
    p.endpoints = model.endpoints;
    if (!config_.models_dir.empty()) {
      // Registered model servers come and go; `sim`/`registered` stand for them.
      p.endpoints.clear();
      for (const auto& e : model.endpoints)
        if (e != "sim" && e != "registered") p.endpoints.push_back(e);
      static_endpoints_[name] = p.endpoints;
      p.allow_no_endpoints = true;
    }
    p.model = model.model;
    if (!model.api_key_env.empty() || !model.api_key_file.empty()) {
      MATRIX_ASSIGN_OR_RETURN(p.api_key, llm::ReadApiKey(model.api_key_env, model.api_key_file));
    }
    p.max_concurrency_per_endpoint = model.max_concurrency_per_endpoint;
    p.timeout_s = model.timeout_s;
    p.outage_s = model.outage_s;
    p.patience_factor = model.patience_factor;
    p.max_retries = model.max_retries;
    p.sticky = model.sticky;
    pools.push_back(std::move(p));
  }
  if (!pools.empty()) {
    MATRIX_ASSIGN_OR_RETURN(llm_, llm::LlmClient::Create(std::move(pools), clock_));
    RefreshModelEndpoints();
  }

  // Tool environments and exec programs: one pool, its sessions in a
  // node-local folder, its size divided among the node's workers.
  int max_sessions = 0;
  double idle_s = 3600;
  bool runs_programs = false;
  for (const auto& [name, role] : pipeline_->roles) {
    if (role.type != RoleType::kTool && role.type != RoleType::kExec) continue;
    runs_programs = true;
    if (role.type == RoleType::kTool) {
      max_sessions = std::max(max_sessions, role.max_sessions);
      idle_s = std::min(idle_s, role.idle_timeout_s);
    }
  }
  if (runs_programs) {
    EnvPool::Options eo;
    const char* tmp = std::getenv("TMPDIR");
    env_root_ = std::string(tmp && *tmp ? tmp : "/tmp") + "/matrix-env-" + identity_;
    eo.work_root = env_root_;
    eo.holder = identity_;
    const int workers = std::max(1, pipeline_->run.workers);
    eo.max_sessions = static_cast<size_t>(std::max(1, (std::max(max_sessions, 1) + workers - 1) / workers));
    eo.idle_timeout_s = idle_s;
    if (!config_.run_dir.empty() && FileExists(config_.run_dir + "/keys")) eo.hide.push_back(config_.run_dir + "/keys");
    envs_ = std::make_unique<EnvPool>(std::move(eo), clock_);
    if (envs_->fd() < 0) return Internal("cannot create the environment pool's epoll instance");
  }

  if (config_.roles.empty()) {
    for (const auto& [name, role] : pipeline_->roles) served_roles_.push_back(name);
  } else {
    served_roles_ = config_.roles;
  }
  for (uint32_t p : config_.partitions) {
    Partition part;
    part.index = p;
    part.owner = "p" + std::to_string(p);
    std::string out = config_.output_dir + "/" + part.owner + ".jsonl";
    MATRIX_ASSIGN_OR_RETURN(part.sink, PartitionSink::Open(out));
    SourceConfig sc;
    sc.dataset_path = pipeline_->dataset.path;
    sc.partition = p;
    sc.partitions = static_cast<uint32_t>(pipeline_->dataset.partitions);
    sc.limit = static_cast<uint64_t>(pipeline_->dataset.limit);
    sc.trials = static_cast<uint32_t>(pipeline_->run.trials);
    sc.max_concurrent = static_cast<size_t>(pipeline_->run.max_concurrent_tasks);
    sc.required_fields = pipeline_->dataset.required_fields;
    MATRIX_ASSIGN_OR_RETURN(part.source, PartitionSource::Open(sc, part.sink->written()));
    LOG_INFO << "partition " << part.owner << ": " << part.source->total_tasks() << " tasks, "
             << part.sink->preexisting() << " already written to " << out;
    partitions_.push_back(std::move(part));
  }

  InheritProgress();
  metrics::RegisterProcessMetrics(metrics_registry_, *clock_);
  refused_mismatch_ = metrics_.Refused("pipeline_mismatch");
  refused_malformed_ = metrics_.Refused("malformed");
  for (const auto& name : served_roles_) RoleMetrics(name);
  // Last: once the endpoint file exists, the worker is up.
  if (!config_.metrics_bind.empty()) {
    MATRIX_ASSIGN_OR_RETURN(metrics_server_,
                            metrics::MetricsServer::Create(metrics_registry_, config_.metrics_bind));
    if (!config_.run_dir.empty()) {
      MATRIX_RETURN_IF_ERROR(metrics_server_->PublishEndpoint(config_.run_dir, config_.worker_id));
    }
    LOG_INFO << "worker metrics at http://" << metrics_server_->address() << "/metrics";
  }
  return Status::Ok();
}

const metrics::WorkerRoleMetrics& Worker::Impl::RoleMetrics(const std::string& role) {
  auto it = role_metrics_.find(role);
  if (it == role_metrics_.end()) it = role_metrics_.emplace(role, metrics_.ForRole(role)).first;
  return it->second;
}

const metrics::WorkerLlmEndpointMetrics& Worker::Impl::LlmEndpointMetrics(const std::string& model,
                                                                         const std::string& endpoint) {
  auto key = std::make_pair(model, endpoint);
  auto it = llm_endpoint_metrics_.find(key);
  if (it != llm_endpoint_metrics_.end()) return it->second;
  // Every error kind starts at zero, so rates over them exist before the first error.
  for (const char* kind : {"timeout", "connect", "http_429", "http_5xx", "http_4xx", "parse"})
    metrics_.LlmError(model, endpoint, kind);
  return llm_endpoint_metrics_.emplace(key, metrics_.ForLlmEndpoint(model, endpoint)).first->second;
}

void Worker::Impl::RecordLlmResult(const llm::ChatResult& res, const std::string& model) {
  // Results of a shutting-down client are not requests the server answered.
  if (res.status.code() == StatusCode::kCancelled) return;
  const metrics::WorkerLlmEndpointMetrics& ep = LlmEndpointMetrics(model, res.endpoint);
  ep.requests.Inc();
  if (res.attempts > 1) ep.retries.Inc(res.attempts - 1);
  auto mit = llm_model_metrics_.find(model);
  if (mit == llm_model_metrics_.end()) mit = llm_model_metrics_.emplace(model, metrics_.ForLlmModel(model)).first;
  const metrics::WorkerLlmModelMetrics& m = mit->second;
  m.request_duration_seconds.Observe(static_cast<double>(res.latency_ns) / 1e9);
  if (res.status.ok()) {
    m.prompt_tokens.Inc(static_cast<double>(res.prompt_tokens));
    m.completion_tokens.Inc(static_cast<double>(res.completion_tokens));
    return;
  }
  const char* kind = res.http_status == 429                             ? "http_429"
                     : res.http_status >= 500                           ? "http_5xx"
                     : res.http_status >= 400                           ? "http_4xx"
                     : res.status.code() == StatusCode::kDeadlineExceeded ? "timeout"
                     : res.http_status == 0                             ? "connect"
                                                                        : "parse";
  metrics_.LlmError(model, res.endpoint, kind).Inc();
}

void Worker::Impl::RecordWritten(wire::TaskStatus status) {
  metrics_.records_written.Inc();
  switch (status) {
    case wire::TaskStatus::kDone: return metrics_.tasks_done.Inc();
    case wire::TaskStatus::kFiltered: return metrics_.tasks_filtered.Inc();
    case wire::TaskStatus::kLost: return metrics_.tasks_lost.Inc();
    case wire::TaskStatus::kFailed:
    case wire::TaskStatus::kRunning: return metrics_.tasks_failed.Inc();
  }
}

void Worker::Impl::SyncStoreMetrics() {
  const store::StoreClient::Stats now = store_->stats();
  if (now.cache_hits > store_synced_.cache_hits)
    metrics_.store_cache_hits.Inc(static_cast<double>(now.cache_hits - store_synced_.cache_hits));
  if (now.cache_misses > store_synced_.cache_misses)
    metrics_.store_cache_misses.Inc(static_cast<double>(now.cache_misses - store_synced_.cache_misses));
  if (now.remote_fetches > store_synced_.remote_fetches)
    metrics_.store_remote_fetches.Inc(static_cast<double>(now.remote_fetches - store_synced_.remote_fetches));
  store_synced_ = now;
}

void Worker::Impl::SyncEnvMetrics() {
  if (!envs_) return;
  const EnvPool::Stats& now = envs_->stats();
  metrics_.env_sessions.Set(static_cast<double>(now.live));
  metrics_.env_sessions_waiting.Set(static_cast<double>(envs_->waiting()));
  auto add = [](const metrics::Counter& c, int64_t now_v, int64_t before) {
    if (now_v > before) c.Inc(static_cast<double>(now_v - before));
  };
  add(metrics_.env_sessions_started, now.started, env_synced_.started);
  add(metrics_.env_tool_calls, now.calls, env_synced_.calls);
  add(metrics_.env_timeouts, now.timeouts, env_synced_.timeouts);
  add(metrics_.env_deaths, now.deaths, env_synced_.deaths);
  add(metrics_.env_programs, now.one_shots, env_synced_.one_shots);
  env_synced_ = now;
}

void Worker::Impl::Send(const wire::Control& control, std::string bundle) {
  transport::Frames frames;
  frames.reserve(2);
  frames.push_back(wire::EncodeControl(control));
  if (!bundle.empty()) frames.push_back(std::move(bundle));
  Status st = broker_->Send(std::move(frames));
  if (!st.ok()) LOG_WARN << "send to broker failed: " << st.message();
  last_send_ns_ = clock_->NowNanos();
}

void Worker::Impl::Register(bool draining) {
  wire::RegisterMsg reg;
  reg.worker_id = identity_;
  reg.pipeline_hash = pipeline_->hash;
  for (const auto& name : served_roles_) {
    const config::RoleConfig* role = pipeline_->Role(name);
    uint32_t cap = draining ? 0 : static_cast<uint32_t>(role ? role->concurrency : 0);
    reg.roles.emplace_back(name, cap);
    // Steps that must run next to this worker's environment sessions.
    const Agent* agent = role ? AgentOf(*role) : nullptr;
    if (agent && !agent->EnvRole(*role).empty()) reg.roles.emplace_back(StickyRole(name, identity_), cap);
  }
  if (envs_) {
    // Sessions of finished tasks, held here or by a worker that is gone.
    reg.roles.emplace_back(StickyRole(kReleaseRole, identity_), config_.sink_capacity);
    reg.roles.emplace_back(kReleaseRole, config_.sink_capacity);
  }
  for (const auto& p : partitions_) reg.roles.emplace_back("sink:" + p.owner, config_.sink_capacity);
  Send(wire::Control{identity_, std::move(reg)});
}

void Worker::Impl::FlushSubmits() {
  if (submit_batch_.items.empty()) return;
  Send(wire::Control{identity_, std::move(submit_batch_)}, std::move(submit_bundle_));
  submit_batch_.items.clear();
  submit_bundle_.clear();
}

void Worker::Impl::Ack(uint64_t lease, bool requeue) {
  if (lease == 0) return;
  submit_batch_.items.push_back({lease, "", "", requeue, false});
  if (submit_batch_.items.size() >= 256) FlushSubmits();
}

Worker::Impl::Partition* Worker::Impl::FindPartition(const std::string& owner) {
  for (auto& p : partitions_)
    if (p.owner == owner) return &p;
  return nullptr;
}

void Worker::Impl::Malformed(const std::string& what) {
  ++invalid_;
  refused_malformed_.Inc();
  int64_t held_back = 0;
  if (malformed_log_.Allow("broker", clock_->NowMillis(), &held_back))
    LOG_WARN << "malformed " << what << PeerLogLimiter::HeldBack(held_back);
}

void Worker::Impl::OnBrokerMessage(std::vector<std::string>& frames) {
  last_recv_ns_ = clock_->NowNanos();
  if (frames.empty()) return Malformed("empty message from the broker");
  auto control = wire::DecodeControl(frames[0]);
  if (!control.ok()) {
    Malformed("message from the broker: " + control.status().message());
    return;
  }
  if (auto* deliver = std::get_if<wire::DeliverMsg>(&control->body)) {
    auto payloads = wire::UnpackPayloadViews(frames, 1, deliver->items.size(), config_.max_message_bytes);
    if (!payloads.ok()) {
      Malformed("delivery of " + std::to_string(deliver->items.size()) + " items: " + payloads.status().message());
      for (const auto& item : deliver->items) Ack(item.lease, /*requeue=*/true);
      return;
    }
    for (size_t i = 0; i < deliver->items.size(); ++i) OnDelivery(deliver->items[i], (*payloads)[i]);
  }
  if (auto* ack = std::get_if<wire::RegisterAckMsg>(&control->body)) {
    // A broker with a new identity lost whatever its predecessor queued:
    // the owner admits its in-flight tasks again (duplicates are absorbed).
    if (!broker_id_.empty() && ack->broker_id != broker_id_) ReadmitAll("broker " + broker_id_ + " restarted");
    broker_id_ = ack->broker_id;
  }
  // Heartbeats only refresh last_recv_ns_.
}

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
  role_in_flight_[r.step->role]++;
  const metrics::WorkerRoleMetrics& role_metrics = RoleMetrics(r.step->role);
  role_metrics.in_flight.Inc();
  if (r.task.enqueue_us > 0 && r.start_us >= r.task.enqueue_us)
    role_metrics.queue_wait_seconds.Observe(static_cast<double>(r.start_us - r.task.enqueue_us) / 1e6);
  const StepParts& parts = PartsOf(r.step);
  if ((parts.role | parts.route) & (kCtxInput | kCtxHistory)) {
    Fetch(id, [this](uint64_t rid) { StartRole(rid); });
  } else {
    StartRole(id);
  }
}

wire::Task Worker::Impl::Expanded(const TaskRun& run) {
  wire::Task full = run.task;
  if (!run.archived_turns.empty())
    full.history.insert(full.history.begin(), run.archived_turns.begin(), run.archived_turns.end());
  if (!run.archived_spans.empty())
    full.spans.insert(full.spans.begin(), run.archived_spans.begin(), run.archived_spans.end());
  return full;
}

void Worker::Impl::Fetch(uint64_t id, std::function<void(uint64_t)> then) {
  TaskRun& run = runs_[id];
  // True when the task goes on (a record is still written, with unresolved
  // content marked in it); false when it ended here (the run may be gone).
  auto fail = [this](uint64_t rid, const Status& st) {
    auto it = runs_.find(rid);
    if (it == runs_.end()) return false;
    if (!it->second.sink) {
      FailTask(rid, wire::TaskStatus::kLost, "object_unavailable", st.ToString());
      return false;
    }
    LOG_WARN << "task " << it->second.task.task_id << ": " << st.ToString();
    return true;
  };
  if (!run.archive_loaded && !run.task.archive.empty()) {
    // First the archived segments, then (second pass) the content they reference.
    std::vector<wire::ObjectRef> refs = run.task.archive;
    store_->Get(refs, [this, id, then, fail](StatusOr<std::vector<std::string>> got) {
      auto it = runs_.find(id);
      if (it == runs_.end()) return;
      TaskRun& r = it->second;
      r.archive_loaded = true;
      if (!got.ok()) {
        if (!fail(id, got.status())) return;
      } else {
        for (const std::string& bytes : *got) {
          auto segment = wire::DecodeTask(bytes, config_.max_message_bytes);
          if (!segment.ok()) {
            if (!fail(id, DataLoss("archived segment: " + segment.status().message()))) return;
            continue;
          }
          for (auto& t : segment->history) r.archived_turns.push_back(std::move(t));
          for (auto& sp : segment->spans) r.archived_spans.push_back(std::move(sp));
        }
      }
      Fetch(id, then);
    });
    return;
  }
  std::vector<wire::ObjectRef> refs;
  for (auto& ref : CollectRefs(run.task))
    if (!run.resolved.count(ref.id)) refs.push_back(ref);
  for (const auto& turn : run.archived_turns)
    if (turn.content.ref && !run.resolved.count(turn.content.ref->id)) refs.push_back(*turn.content.ref);
  if (refs.empty()) return then(id);
  store_->Get(refs, [this, id, refs, then, fail](StatusOr<std::vector<std::string>> got) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    if (got.ok()) {
      for (size_t i = 0; i < refs.size() && i < got->size(); ++i)
        it->second.resolved[refs[i].id] = std::move((*got)[i]);
    } else if (!fail(id, got.status())) {
      return;
    }
    then(id);
  });
}

void Worker::Impl::StartRole(uint64_t id) {
  TaskRun& run = runs_[id];
  unsigned parts = PartsOf(run.step).role;
  wire::Task full = (parts & kCtxHistory) ? Expanded(run) : wire::Task();
  const wire::Task& view = (parts & kCtxHistory) ? full : run.task;
  Json ctx = parts ? BuildContext(view, run.resolved, parts) : Json::object();
  StepContext step{id, *run.step, *run.role, run.task, view, run.resolved, ctx};
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

void Worker::Impl::CallLlm(uint64_t id, const std::string& model, Json body,
                           std::function<void(llm::ChatResult&)> done) {
  auto it = runs_.find(id);
  if (it == runs_.end()) return;
  if (!llm_) return Complete(id, StepOutcome::Failed("no_model", "pipeline has no models"), nullptr);
  it->second.on_llm = std::move(done);
  llm_->Submit(llm::ChatRequest{id, model, std::move(body), it->second.task.task_id});
}

void Worker::Impl::OnLlmResults() {
  std::vector<llm::ChatResult> results;
  llm_->Drain(&results);
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

  unsigned route_parts = PartsOf(run.step).route;
  Json route_ctx = Json::object();
  if (route_parts & kCtxHistory) {
    route_ctx = BuildContext(Expanded(run), run.resolved, route_parts);
  } else if (route_parts) {
    route_ctx = BuildContext(task, run.resolved, route_parts);
  }
  RouteDecision next = Route(*run.step, task, route_ctx);
  if (!next.status.ok()) {
    return FailTask(id, wire::TaskStatus::kFailed, next.reason,
                    "step '" + run.step->name + "': " + next.status.message());
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
  run.next_role = step ? QueueFor(*step, task) : next.target;
  OffloadAndSubmit(id);
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

void Worker::Impl::OffloadAndSubmit(uint64_t id) {
  TaskRun& run = runs_[id];
  if (run.step) {
    role_in_flight_[run.step->role]--;
    RoleMetrics(run.step->role).in_flight.Dec();
  }
  run.step = nullptr;  // in-flight accounting done once
  size_t threshold = pipeline_->run.offload_threshold_bytes;
  auto offload = [&](wire::Content* content, auto locate) {
    if (content->ref || content->text.size() <= threshold) return;
    run.pending_puts++;
    ++offloaded_;
    std::string text = content->text;
    const double bytes = static_cast<double>(text.size());
    store_->Put(std::move(text), [this, id, locate, bytes](StatusOr<wire::ObjectRef> ref) {
      auto it = runs_.find(id);
      if (it == runs_.end()) return;
      TaskRun& r = it->second;
      if (ref.ok()) {
        metrics_.offloaded_bytes.Inc(bytes);
        wire::Content* c = locate(r.task);
        r.resolved[ref->id] = std::move(c->text);
        c->text.clear();
        c->ref = *ref;
      }  // on failure the content simply stays inline
      if (--r.pending_puts == 0) ArchiveAndSubmit(id);
    });
  };
  offload(&run.task.input, [](wire::Task& t) { return &t.input; });
  for (size_t i = 0; i < run.task.history.size(); ++i)
    offload(&run.task.history[i].content, [i](wire::Task& t) { return &t.history[i].content; });
  if (run.pending_puts == 0) ArchiveAndSubmit(id);
}

void Worker::Impl::ArchiveAndSubmit(uint64_t id) {
  // Keeps the message small: beyond kMaxInlineTurns turns or kMaxInlineSpans
  // spans, everything but the last kKeepTurns turns moves into a segment.
  constexpr size_t kMaxInlineTurns = 6, kKeepTurns = 2, kMaxInlineSpans = 12;
  TaskRun& run = runs_[id];
  wire::Task& task = run.task;
  bool terminal = run.next_role.rfind("sink:", 0) == 0;
  if (terminal || (task.history.size() <= kMaxInlineTurns && task.spans.size() <= kMaxInlineSpans))
    return SubmitRun(id);
  size_t turns = task.history.size() > kKeepTurns ? task.history.size() - kKeepTurns : 0;
  size_t spans = task.spans.size();
  wire::Task segment;
  segment.task_id = task.task_id;
  segment.history.assign(task.history.begin(), task.history.begin() + static_cast<long>(turns));
  segment.spans = task.spans;
  ++archived_segments_;
  store_->Put(wire::EncodeTask(segment), [this, id, turns, spans](StatusOr<wire::ObjectRef> ref) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    TaskRun& r = it->second;
    if (ref.ok()) {
      if (r.archive_loaded || r.task.archive.empty()) {
        r.archived_turns.insert(r.archived_turns.end(), r.task.history.begin(),
                                r.task.history.begin() + static_cast<long>(turns));
        r.archived_spans.insert(r.archived_spans.end(), r.task.spans.begin(),
                                r.task.spans.begin() + static_cast<long>(spans));
        r.archive_loaded = true;
      }
      r.task.history.erase(r.task.history.begin(), r.task.history.begin() + static_cast<long>(turns));
      r.task.spans.erase(r.task.spans.begin(), r.task.spans.begin() + static_cast<long>(spans));
      r.task.archive.push_back(*ref);
    }  // on failure the segment simply stays inline
    SubmitRun(id);
  });
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

void Worker::Impl::FreeRefs(const wire::Task& task) {
  auto refs = CollectRefs(task);
  refs.insert(refs.end(), task.archive.begin(), task.archive.end());
  if (!refs.empty()) store_->Free(std::move(refs));
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
  if (part->sink->Written(run.task.task_id)) {
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
             << "; admitting it again (attempt "
             << run.task.attempt + 1 << ")";
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
  std::string line = RecordLine(full, run.resolved, clock_->WallMicros());
  Partition::Blocked record{run.lease, std::move(full), std::move(line)};
  // Behind records that wait for the output: keep the file's order and do not
  // hammer a full disk.
  if (!part->blocked.empty() || !TryWriteRecord(*part, record)) {
    part->blocked.push_back(std::move(record));
    ++output_blocked_;
  }
}

bool Worker::Impl::TryWriteRecord(Partition& part, Partition::Blocked& record) {
  const int64_t now = clock_->NowNanos();
  auto written = part.sink->WriteLine(record.full.task_id, wire::TaskStatusName(record.full.status), record.line);
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
      run.next_role = start ? start->role : t.step;
      OffloadAndSubmit(NewRun(std::move(run)));
    }
  }
}

void Worker::Impl::InheritProgress() {
  // A predecessor of the same name in this run (it died and was restarted):
  // its counts go on from where they were, so progress never goes back.
  if (config_.run_dir.empty()) return;
  auto text = ReadFile(config_.run_dir + "/progress/" + config_.worker_id + ".json");
  if (!text.ok()) return;
  Json prev = Json::parse(*text, nullptr, false);
  if (!prev.is_object() || prev.value("job", "") != config_.job_id) return;
  auto num = [&prev](const char* key) {
    auto it = prev.find(key);
    return it != prev.end() && it->is_number_integer() ? it->get<int64_t>() : int64_t{0};
  };
  started_us_ = num("started_us") > 0 ? num("started_us") : started_us_;
  hops_ += num("hops");
  steps_run_ += num("steps");
  llm_calls_ += num("llm_calls");
  llm_errors_ += num("llm_errors");
  llm_attempts_ += num("llm_attempts");
  prompt_tokens_ += num("prompt_tokens");
  completion_tokens_ += num("completion_tokens");
  lost_ += num("lost");
  duplicates_ += num("duplicates");
  if (auto it = prev.find("tokens_by_model"); it != prev.end() && it->is_object())
    for (const auto& [model, t] : it->items())
      if (t.is_object()) {
        model_tokens_[model].first += t.value("prompt", int64_t{0});
        model_tokens_[model].second += t.value("completion", int64_t{0});
      }
  if (auto it = prev.find("partitions"); it != prev.end() && it->is_object())
    for (auto& part : partitions_) {
      auto pj = it->find(part.owner);
      if (pj == it->end() || !pj->is_object()) continue;
      part.inherited_preexisting = pj->value("preexisting", int64_t{-1});
      if (auto c = pj->find("counts"); c != pj->end() && c->is_object())
        for (const auto& [status, n] : c->items())
          if (n.is_number_integer()) part.inherited_counts[status] += n.get<int64_t>();
    }
}

void Worker::Impl::WriteProgress(bool final) {
  // One marker file per finished partition: what `matrix node` counts to
  // know the whole run is done, without reading every progress file.
  if (!config_.finished_dir.empty()) {
    for (auto& p : partitions_) {
      if (p.marked_finished || !p.source->Finished()) continue;
      if (MakeDirs(config_.finished_dir).ok() &&
          WriteFileAtomic(config_.finished_dir + "/" + p.owner, std::to_string(p.sink->written().size()) + "\n").ok())
        p.marked_finished = true;
    }
  }
  if (config_.run_dir.empty()) return;
  Json parts = Json::object();
  for (const auto& p : partitions_) {
    std::map<std::string, int64_t> merged = p.inherited_counts;
    for (const auto& [status, n] : p.sink->counts()) merged[status] += n;
    Json counts = Json::object();
    for (const auto& [status, n] : merged) counts[status] = n;
    parts[p.owner] = {{"total", p.source->total_tasks()},
                      {"preexisting", p.inherited_preexisting >= 0 ? p.inherited_preexisting : p.sink->preexisting()},
                      {"skipped", p.source->skipped()},
                      {"admitted", p.source->admitted()},
                      {"in_flight", p.source->in_flight()},
                      {"written", static_cast<int64_t>(p.sink->written().size())},
                      {"counts", counts},
                      {"finished", p.source->Finished()},
                      {"output", p.sink->path()}};
  }
  Json roles = Json::object();
  for (const auto& [role, n] : role_in_flight_) roles[role] = n;
  Json progress = {{"worker", identity_},
                   {"job", config_.job_id},
                   {"pid", ::getpid()},
                   {"updated_us", clock_->WallMicros()},
                   {"started_us", started_us_},
                   {"final", final},
                   {"partitions", parts},
                   {"roles_in_flight", roles},
                   {"running", runs_.size()},
                   {"hops", hops_},
                   {"steps", steps_run_},
                   {"llm_calls", llm_calls_},
                   {"llm_errors", llm_errors_},
                   {"llm_attempts", llm_attempts_},
                   {"prompt_tokens", prompt_tokens_},
                   {"completion_tokens", completion_tokens_},
                   {"offloaded", offloaded_},
                   {"archived_segments", archived_segments_},
                   {"refused", refused_},
                   {"invalid_messages", invalid_},
                   {"duplicates", duplicates_},
                   {"lost", lost_},
                   {"admission_pauses", admission_pauses_},
                   {"admission_paused", clock_->NowNanos() < admit_paused_until_ns_}};
  Json by_model = Json::object();
  for (const auto& [model, t] : model_tokens_) by_model[model] = {{"prompt", t.first}, {"completion", t.second}};
  progress["tokens_by_model"] = by_model;
  metrics_.output_blocked_records.Set(static_cast<double>(output_blocked_));
  if (!output_error_.empty())
    progress["output_blocked"] = {{"error", output_error_},
                                  {"records", output_blocked_},
                                  {"for_s", (clock_->NowNanos() - output_blocked_since_ns_) / 1e9}};
  if (envs_) {
    const EnvPool::Stats& es = envs_->stats();
    progress["envs"] = {{"live", es.live}, {"waiting", envs_->waiting()}, {"peak_live", es.peak_live},
                        {"started", es.started}, {"failed_starts", es.failed_starts}, {"calls", es.calls},
                        {"timeouts", es.timeouts}, {"deaths", es.deaths}, {"one_shots", es.one_shots}};
  }
  // The pipeline's price table, for readers without the pipeline (matrix status).
  Json prices = Json::object();
  for (const auto& [name, m] : pipeline_->models)
    if (m.price)
      prices[name] = {{"input_per_million", m.price->input_per_million},
                      {"output_per_million", m.price->output_per_million},
                      {"currency", m.price->currency}};
  if (!prices.empty()) progress["prices"] = prices;
  auto st = store_->stats();
  progress["store"] = {{"puts", st.puts}, {"gets", st.gets}, {"cache_hits", st.cache_hits},
                       {"cache_misses", st.cache_misses}, {"frees", st.frees}, {"errors", st.errors},
                       {"remote_fetches", st.remote_fetches}};
  if (llm_) {
    Json eps = Json::array();
    for (const auto& e : llm_->Stats())
      eps.push_back({{"pool", e.pool}, {"url", e.url}, {"in_flight", e.in_flight}, {"requests", e.requests},
                     {"errors", e.errors}, {"retries", e.retries}, {"healthy", e.healthy}, {"state", e.state},
                     {"probes", e.probes}, {"probes_failed", e.probes_failed},
                     {"concurrency_limit", e.concurrency_limit}});
    progress["endpoints"] = eps;
  }
  std::string dir = config_.run_dir + "/progress";
  if (MakeDirs(dir).ok()) {
    Status s = WriteFileAtomic(dir + "/" + config_.worker_id + ".json", DumpJson(progress), 0644,
                               Durability::kProcessCrash);
    if (!s.ok()) LOG_WARN << s.message();
  }
}

void Worker::Impl::RefreshModelEndpoints() {
  if (config_.models_dir.empty() || !llm_) return;
  for (const auto& [name, fixed] : static_endpoints_) {
    std::vector<std::string> list = fixed;
    for (auto& e : llm::ScanRegisteredEndpoints(config_.models_dir + "/" + name))
      if (std::find(list.begin(), list.end(), e) == list.end()) list.push_back(std::move(e));
    auto& last = current_endpoints_[name];
    if (list == last) continue;
    LOG_INFO << "model " << name << ": " << list.size() << " endpoint(s) registered";
    Status st = llm_->SetEndpoints(name, list);
    if (!st.ok()) LOG_WARN << "model " << name << ": " << st.message();
    last = std::move(list);
  }
}

Status Worker::Impl::Run() {
  transport::Poller poller;
  int broker_idx = 0, llm_idx = -1, sig_idx = -1, env_idx = -1;
  std::vector<int> store_idx;
  uint64_t store_generation = 0;
  // Rebuilt when the store client opens a connection to another node's store.
  auto build_poller = [&] {
    poller = transport::Poller();
    broker_idx = poller.AddSocket(broker_.get());
    store_idx.clear();
    for (transport::Socket* s : store_->sockets()) store_idx.push_back(poller.AddSocket(s));
    llm_idx = llm_ ? poller.AddFd(llm_->notify_fd()) : -1;
    env_idx = envs_ ? poller.AddFd(envs_->fd()) : -1;
    sig_idx = config_.signal_fd >= 0 ? poller.AddFd(config_.signal_fd) : -1;
    store_generation = store_->sockets_generation();
  };
  build_poller();
  Register(false);
  last_recv_ns_ = clock_->NowNanos();
  const int64_t hb_ns = static_cast<int64_t>(config_.heartbeat_ms) * 1'000'000;
  std::vector<std::string> frames;
  while (true) {
    RetryBlockedRecords();
    Admit();
    FlushSubmits();
    store_->Tick();
    SyncStoreMetrics();
    if (store_->sockets_generation() != store_generation) build_poller();
    poller.Poll(store_->PollTimeoutMs(draining_ ? 20 : 50));
    int64_t now = clock_->NowNanos();
    if ((sig_idx >= 0 && poller.Readable(sig_idx)) || (stop_requested_ && !draining_)) {
      int sig = sig_idx >= 0 ? ReadSignal(config_.signal_fd) : 0;
      if (draining_) {
        LOG_WARN << "second signal: exiting now";
        break;
      }
      LOG_INFO << "signal " << sig << ": draining " << runs_.size() << " running tasks for up to "
               << config_.grace_s << " s";
      draining_ = true;
      drain_deadline_ns_ = now + static_cast<int64_t>(config_.grace_s * 1e9);
      for (auto& p : partitions_) p.source->Close();
      Register(true);
    }
    if (poller.Readable(broker_idx)) {
      // Hand each delivered batch on before reading the next, so the broker
      // works on our submissions while we run the next batch (pipelining).
      for (int i = 0; i < 1024 && broker_->TryRecv(&frames); ++i) {
        OnBrokerMessage(frames);
        store_->Tick();
        FlushSubmits();
      }
    }
    bool store_readable = false;
    for (int idx : store_idx) store_readable |= poller.Readable(idx);
    if (store_readable) store_->OnReadable();
    if (llm_idx >= 0 && poller.Readable(llm_idx)) OnLlmResults();
    if (envs_) {
      if (env_idx >= 0 && poller.Readable(env_idx)) envs_->OnReadable();
      // Deadlines are seconds long: a scan of the sessions every 10 ms is enough.
      if (now - last_env_tick_ns_ >= 10'000'000) {
        last_env_tick_ns_ = now;
        envs_->Tick();
        SyncEnvMetrics();
      }
    }
    if (now - last_send_ns_ > hb_ns) Send(wire::Control{identity_, wire::HeartbeatMsg{}});
    if (now - last_recv_ns_ > 3 * hb_ns) {
      LOG_WARN << "no word from the broker for " << (now - last_recv_ns_) / 1'000'000 << " ms; registering again";
      Register(draining_);
      last_recv_ns_ = now;
    }
    if (now - last_progress_ns_ > static_cast<int64_t>(config_.progress_ms) * 1'000'000) {
      last_progress_ns_ = now;
      RefreshModelEndpoints();
      ReadmitStale();
      WriteProgress(false);
    }
    if (draining_ && (runs_.empty() || now > drain_deadline_ns_)) break;
  }
  // Hand back whatever is still running; the broker redelivers it.
  for (auto& [id, run] : runs_) Ack(run.lease, /*requeue=*/true);
  runs_.clear();
  for (auto& part : partitions_) {
    if (!part.blocked.empty())
      LOG_WARN << part.blocked.size() << " records of " << part.owner << " not written (" << output_error_
               << "); their tasks run again";
    for (auto& record : part.blocked) Ack(record.lease, /*requeue=*/true);
    part.blocked.clear();
  }
  FlushSubmits();
  if (envs_) {
    // No environment process outlives its worker.
    LOG_INFO << "closing " << envs_->live() << " environment sessions";
    envs_->ReleaseAll();
    std::error_code ignored;
    std::filesystem::remove_all(env_root_, ignored);
  }
  WriteProgress(true);
  if (llm_) llm_->Shutdown();
  LOG_INFO << "worker stopped";
  return Status::Ok();
}

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Worker::~Worker() = default;
Status Worker::Run() { return impl_->Run(); }
void Worker::HandleBrokerMessage(std::vector<std::string>& frames) { impl_->HandleBrokerMessage(frames); }
void Worker::Stop() { impl_->Stop(); }

StatusOr<std::unique_ptr<Worker>> Worker::Create(WorkerConfig config,
                                                 std::shared_ptr<const config::Pipeline> pipeline,
                                                 transport::Context* ctx, const Clock* clock) {
  auto impl = std::make_unique<Impl>(std::move(config), std::move(pipeline), ctx, clock);
  MATRIX_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

}  // namespace matrix::worker
