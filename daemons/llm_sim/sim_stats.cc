// SimStats rendering for GET /stats.
#include "daemons/llm_sim/sim_stats.h"

#include "common/base/json.h"

namespace matrix::llm_sim {

const char* EndpointName(Endpoint endpoint) {
  switch (endpoint) {
    case Endpoint::kChatCompletions: return "/v1/chat/completions";
    case Endpoint::kCompletions: return "/v1/completions";
    case Endpoint::kModels: return "/v1/models";
    case Endpoint::kHealth: return "/health";
    case Endpoint::kStats: return "/stats";
    case Endpoint::kOther: return "other";
  }
  return "other";
}

void SimStats::OnRateLimited(uint64_t body_hash, int64_t now_us, double retry_after_s) {
  std::lock_guard<std::mutex> lock(retry_mu_);
  if (rate_limited_.size() > 1'000'000) rate_limited_.clear();  // bounded memory
  rate_limited_[body_hash] = Pending{now_us, retry_after_s};
}

void SimStats::OnRequestBody(uint64_t body_hash, int64_t now_us) {
  std::lock_guard<std::mutex> lock(retry_mu_);
  auto it = rate_limited_.find(body_hash);
  if (it == rate_limited_.end()) return;
  int64_t gap = now_us - it->second.sent_us;
  ++retries_after_429_;
  // 10 ms of slack for clock granularity between the answer and our stamp.
  if (gap + 10'000 < static_cast<int64_t>(it->second.retry_after_s * 1e6)) ++early_retries_after_429_;
  if (min_retry_gap_us_ < 0 || gap < min_retry_gap_us_) min_retry_gap_us_ = gap;
  sum_retry_gap_s_ += gap / 1e6;
  rate_limited_.erase(it);
}

std::string SimStats::ToJson() const {
  auto load = [](const auto& a) { return a.load(std::memory_order_relaxed); };
  Json j;
  j["requests_total"] = load(requests_total);
  Json by_endpoint = Json::object();
  for (int i = 0; i < kEndpointCount; ++i)
    by_endpoint[EndpointName(static_cast<Endpoint>(i))] = load(requests_by_endpoint[i]);
  j["requests_by_endpoint"] = std::move(by_endpoint);
  Json by_status = Json::object();
  for (size_t code = 0; code < responses_by_status.size(); ++code)
    if (uint64_t n = load(responses_by_status[code])) by_status[std::to_string(code)] = n;
  j["responses_by_status"] = std::move(by_status);
  Json faults = Json::object();
  for (int i = 0; i < kFaultKindCount; ++i)
    faults[FaultKindName(static_cast<FaultKind>(i))] = load(faults_injected[i]);
  j["faults_injected"] = std::move(faults);
  j["tokens_in"] = load(tokens_in);
  j["tokens_out"] = load(tokens_out);
  j["completions_finished"] = load(completions_finished);
  j["completions_cancelled"] = load(completions_cancelled);
  j["connections_total"] = load(connections_total);
  j["connections_open"] = load(connections_open);
  j["active_sequences"] = load(active_sequences);
  j["queued"] = load(queued);
  j["engine_steps"] = load(engine_steps);
  {
    std::lock_guard<std::mutex> lock(retry_mu_);
    j["retries_after_429"] = retries_after_429_;
    j["early_retries_after_429"] = early_retries_after_429_;
    j["min_retry_gap_after_429_s"] = min_retry_gap_us_ < 0 ? 0.0 : min_retry_gap_us_ / 1e6;
    j["mean_retry_gap_after_429_s"] = retries_after_429_ ? sum_retry_gap_s_ / retries_after_429_ : 0.0;
  }
  return DumpJson(j);
}

}  // namespace matrix::llm_sim
