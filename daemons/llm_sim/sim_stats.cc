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
  return j.dump();
}

}  // namespace matrix::llm_sim
