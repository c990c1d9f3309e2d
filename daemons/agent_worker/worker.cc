#include "daemons/agent_worker/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "common/base/files.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/base/strings.h"
#include "common/llm/endpoint_directory.h"
#include "daemons/agent_worker/worker_impl.h"

namespace matrix::worker {

using config::RoleType;

Status Worker::Impl::ConnectStore() {
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
  MATRIX_ASSIGN_OR_RETURN(auto client, store::StoreClient::Create(*ctx_, config_.store_endpoint, config_.node,
                                                                 clock_, store_opts));
  store_ = std::move(client);
  return Status::Ok();
}

Status Worker::Impl::CreateLlmClient() {
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
    p.breaker_cooldown_s = model.breaker_cooldown_s;
    p.sticky = model.sticky;
    pools.push_back(std::move(p));
  }
  if (pools.empty()) return Status::Ok();
  // On this loop: no request or result crosses a thread.
  MATRIX_ASSIGN_OR_RETURN(auto client,
                          llm::LlmClient::Create(std::move(pools), clock_, loop_.get()));
  llm_ = std::move(client);
  return Status::Ok();
}

Status Worker::Impl::Init() {
  started_us_ = clock_->WallMicros();
  MATRIX_ASSIGN_OR_RETURN(loop_, EventLoop::Create(clock_));
  if (!config_.run_dir.empty()) {
    const std::string dir = config_.run_dir + "/progress";
    MATRIX_ASSIGN_OR_RETURN(crash_, CrashMarker::Open(dir, config_.worker_id));
    if (!crash_.inherited().empty())
      LOG_WARN << "the previous " << config_.worker_id << " died while handling task " << crash_.inherited();
    crash_counts_ = CrashMarker::ReadCrashes(dir);
  }
  if (const char* fault = std::getenv("MATRIX_FAULT_ABORT_ON_INPUT")) abort_on_input_ = fault;
  for (const auto& [name, s] : pipeline_->flow.steps)
    if (s.fanout && !s.fanout->join.empty()) join_of_[pipeline_->Step(s.fanout->join)] = &s;
  transport::SocketOptions opts;
  opts.identity = identity_;
  opts.max_message_bytes = static_cast<int64_t>(config_.max_message_bytes);
  if (config_.keys) opts = transport::CurveClientOptions(*config_.keys, opts);
  MATRIX_ASSIGN_OR_RETURN(broker_, transport::Socket::Connect(*ctx_, transport::Socket::Kind::kDealer,
                                                             config_.broker_endpoint, opts));
  if (!store_) MATRIX_RETURN_IF_ERROR(ConnectStore());
  if (!llm_) MATRIX_RETURN_IF_ERROR(CreateLlmClient());
  RefreshModelEndpoints();

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
    if (pipeline_->run.output_compression == config::RunConfig::OutputCompression::kZstd) out += ".zst";
    MATRIX_ASSIGN_OR_RETURN(part.sink, PartitionSink::Open(out));
    // Also when an earlier run of this output kept only what ended done.
    const std::string dropped = config_.output_dir + "/dropped-" + part.owner + ".jsonl";
    if (pipeline_->run.records == config::RunConfig::Records::kDone || FileExists(dropped)) {
      MATRIX_ASSIGN_OR_RETURN(part.dropped, PartitionSink::Open(dropped));
    }
    std::unordered_set<std::string> written = part.sink->written();
    if (part.dropped) written.insert(part.dropped->written().begin(), part.dropped->written().end());
    SourceConfig sc;
    sc.dataset_path = pipeline_->dataset.path;
    sc.partition = p;
    sc.partitions = static_cast<uint32_t>(pipeline_->dataset.partitions);
    sc.limit = static_cast<uint64_t>(pipeline_->dataset.limit);
    sc.trials = static_cast<uint32_t>(pipeline_->run.trials);
    sc.max_concurrent = static_cast<size_t>(pipeline_->run.max_concurrent_tasks);
    sc.required_fields = pipeline_->dataset.required_fields;
    MATRIX_ASSIGN_OR_RETURN(part.source, PartitionSource::Open(sc, written));
    LOG_INFO << "partition " << part.owner << ": " << part.source->total_tasks() << " tasks, " << written.size()
             << " already written to " << out << (part.dropped ? " and " + dropped : "");
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

void Worker::Impl::WatchStoreSockets() {
  for (int fd : store_fds_) loop_->Unwatch(fd);
  store_fds_.clear();
  for (transport::Socket* s : store_->sockets()) {
    Status st = s->WatchOn(*loop_, [this] { store_->OnReadable(); });
    if (st.ok()) store_fds_.push_back(s->fd());
    else LOG_ERROR << "cannot watch the store socket to " << s->endpoint() << ": " << st.message();
  }
  store_generation_ = store_->sockets_generation();
}

void Worker::Impl::BeginDrain(int sig) {
  if (draining_) {
    LOG_WARN << "second signal: exiting now";
    loop_->Stop();
    return;
  }
  LOG_INFO << (sig ? "signal " + std::to_string(sig) : std::string("stop requested")) << ": draining "
           << runs_.size() << " running tasks for up to " << config_.grace_s << " s";
  draining_ = true;
  drain_deadline_ns_ = clock_->NowNanos() + static_cast<int64_t>(config_.grace_s * 1e9);
  for (auto& p : partitions_) p.source->Close();
  Register(true);
}

int64_t Worker::Impl::Turn() {
  // Answers the last turn's handlers read come first: their next steps
  // and LLM calls then go out in this turn.
  if (llm_) OnLlmResults();
  RetryBlockedRecords();
  StartWaiting();
  Admit();
  FlushSubmits();
  store_->Tick();
  // Completions the tick ran (cache hits) may have finished steps: their
  // submissions go now, not after the wait.
  FlushSubmits();
  SyncStoreMetrics();
  if (store_->sockets_generation() != store_generation_) WatchStoreSockets();
  int64_t wait_ms = store_->PollTimeoutMs(draining_ ? 20 : 50);
  if (llm_) {
    // The LLM calls of this turn go out now; its timers bound the wait.
    // Answers it finds at once (a failed connection) are handled now too.
    for (int round = 0; round < 4; ++round) {
      const int llm_wait_ms = llm_->Pump();
      if (llm_wait_ms >= 0) wait_ms = std::min<int64_t>(wait_ms, llm_wait_ms);
      if (OnLlmResults() == 0) break;
      FlushSubmits();
    }
  }
  const int64_t now = clock_->NowNanos();
  if (stop_requested_ && !draining_) BeginDrain(0);
  if (envs_ && now - last_env_tick_ns_ >= 10'000'000) {
    // Deadlines are seconds long: a scan of the sessions every 10 ms is enough.
    last_env_tick_ns_ = now;
    envs_->Tick();
    SyncEnvMetrics();
  }
  const int64_t hb_ns = static_cast<int64_t>(config_.heartbeat_ms) * 1'000'000;
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
    CheckJoinDeadlines();
    WriteProgress(false);
  }
  if (draining_ && (runs_.empty() || now > drain_deadline_ns_)) loop_->Stop();
  return wait_ms * 1'000'000;
}

Status Worker::Impl::Run() {
  std::vector<std::string> frames;
  MATRIX_RETURN_IF_ERROR(broker_->WatchOn(*loop_, [this, &frames] {
    // Hand each delivered batch on before reading the next, so the broker
    // works on our submissions while we run the next batch (pipelining).
    for (int i = 0; i < 1024 && broker_->TryRecv(&frames); ++i) {
      OnBrokerMessage(frames);
      store_->Tick();
      FlushSubmits();
    }
  }));
  WatchStoreSockets();
  // A chat service with a thread of its own signals its answers on an fd;
  // the LLM client, on this loop, has its sockets here already.
  if (llm_ && llm_->notify_fd() >= 0)
    MATRIX_RETURN_IF_ERROR(loop_->Watch(llm_->notify_fd(), EPOLLIN, [this](uint32_t) { OnLlmResults(); }));
  if (envs_) MATRIX_RETURN_IF_ERROR(loop_->Watch(envs_->fd(), EPOLLIN, [this](uint32_t) { envs_->OnReadable(); }));
  if (config_.signal_fd >= 0)
    MATRIX_RETURN_IF_ERROR(loop_->WatchSignals(config_.signal_fd, [this](int sig) { BeginDrain(sig); }));
  loop_->EachTurn([this] { return Turn(); });
  Register(false);
  last_recv_ns_ = clock_->NowNanos();
  loop_->Run();
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
                                                 transport::Context* ctx, const Clock* clock,
                                                 WorkerServices services) {
  auto impl = std::make_unique<Impl>(std::move(config), std::move(pipeline), ctx, clock, std::move(services));
  MATRIX_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

}  // namespace matrix::worker
