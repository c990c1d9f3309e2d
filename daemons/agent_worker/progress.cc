// The progress file (<run_dir>/progress/<worker>.json, read by `matrix run`
// and `matrix status`) and the worker's Prometheus metrics.

#include "daemons/agent_worker/worker_impl.h"

#include "common/base/files.h"
#include "common/base/json.h"
#include "common/base/log.h"

namespace matrix::worker {

using config::RoleType;

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
          WriteFileAtomic(config_.finished_dir + "/" + p.owner, std::to_string(p.WrittenCount()) + "\n").ok())
        p.marked_finished = true;
    }
  }
  if (config_.run_dir.empty()) return;
  Json parts = Json::object();
  for (const auto& p : partitions_) {
    std::map<std::string, int64_t> merged = p.inherited_counts;
    for (const auto& [status, n] : p.sink->counts()) merged[status] += n;
    if (p.dropped)
      for (const auto& [status, n] : p.dropped->counts()) merged[status] += n;
    Json counts = Json::object();
    for (const auto& [status, n] : merged) counts[status] = n;
    parts[p.owner] = {{"total", p.source->total_tasks()},
                      {"preexisting", p.inherited_preexisting >= 0
                                         ? p.inherited_preexisting
                                         : p.sink->preexisting() + (p.dropped ? p.dropped->preexisting() : 0)},
                      {"skipped", p.source->skipped()},
                      {"admitted", p.source->admitted()},
                      {"in_flight", p.source->in_flight()},
                      {"written", p.WrittenCount()},
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
                   {"waiting_for_branches", joins_.size()},
                   {"branches_started", branches_started_},
                   {"branches_dropped", branches_dropped_},
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

}  // namespace matrix::worker
