// SimStats: the server's counters, declared in one block and served as JSON
// by GET /stats. Counters only grow; gauges (active_sequences, queued,
// connections_open) are overwritten with the latest value.
// Thread-safety: every field is atomic; any thread may update or read.
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <unordered_map>
#include <cstdint>
#include <string>

#include "daemons/llm_sim/sim_faults.h"

namespace matrix::llm_sim {

enum class Endpoint { kChatCompletions = 0, kCompletions, kModels, kHealth, kStats, kOther };
constexpr int kEndpointCount = 6;
// "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/stats", "other".
const char* EndpointName(Endpoint endpoint);

struct SimStats {
  std::atomic<uint64_t> requests_total{0};
  std::array<std::atomic<uint64_t>, kEndpointCount> requests_by_endpoint{};
  std::array<std::atomic<uint64_t>, 600> responses_by_status{};  // index: HTTP status
  std::array<std::atomic<uint64_t>, kFaultKindCount> faults_injected{};
  std::atomic<uint64_t> tokens_in{0};   // prompt tokens of admitted requests
  std::atomic<uint64_t> tokens_out{0};  // completion tokens of finished responses
  std::atomic<uint64_t> completions_finished{0};
  std::atomic<uint64_t> completions_cancelled{0};  // client left before the answer
  std::atomic<uint64_t> connections_total{0};
  std::atomic<int64_t> connections_open{0};
  std::atomic<int64_t> active_sequences{0};  // holding a batch slot
  std::atomic<int64_t> queued{0};            // waiting for a slot
  std::atomic<uint64_t> engine_steps{0};

  void CountRequest(Endpoint e) {
    requests_total.fetch_add(1, std::memory_order_relaxed);
    requests_by_endpoint[static_cast<int>(e)].fetch_add(1, std::memory_order_relaxed);
  }
  void CountResponse(int status) {
    if (status >= 0 && status < 600)
      responses_by_status[static_cast<size_t>(status)].fetch_add(1, std::memory_order_relaxed);
  }
  void CountFault(FaultKind kind) {
    faults_injected[static_cast<int>(kind)].fetch_add(1, std::memory_order_relaxed);
  }

  // Retry-After compliance, measured here: every 429 remembers the request
  // body's hash and the Retry-After it asked for; when the same body comes
  // back, the gap is recorded. Thread-safe.
  void OnRateLimited(uint64_t body_hash, int64_t now_us, double retry_after_s);
  void OnRequestBody(uint64_t body_hash, int64_t now_us);

  // {"requests_total":..,"requests_by_endpoint":{..},"responses_by_status":{"200":..},
  //  "faults_injected":{"http_429":..},"active_sequences":..,"queued":..,"tokens_in":..,...}
  std::string ToJson() const;

 private:
  struct Pending {
    int64_t sent_us;
    double retry_after_s;
  };
  mutable std::mutex retry_mu_;
  std::unordered_map<uint64_t, Pending> rate_limited_;  // GUARDED_BY(retry_mu_)
  uint64_t retries_after_429_ = 0;                      // GUARDED_BY(retry_mu_)
  uint64_t early_retries_after_429_ = 0;                // before Retry-After elapsed
  int64_t min_retry_gap_us_ = -1;
  double sum_retry_gap_s_ = 0;
};

}  // namespace matrix::llm_sim
