// FaultInjector: decides, per completion request, which failure to simulate.
// Each kind has its own probability (SimConfig fault_*), drawn independently
// from one process-level RNG seeded with fault_seed, so a run with the same
// seed and request order injects the same faults. When several kinds fire at
// once the strongest wins: drop > hang > 500 > 503 > 429; malformed bodies
// and latency spikes combine with a normal answer.
// Thread-safety: Decide() is safe from any thread.
#pragma once

#include <mutex>

#include "daemons/llm_sim/sim_config.h"
#include "daemons/llm_sim/sim_rng.h"

namespace matrix::llm_sim {

enum class FaultKind { kDrop = 0, kHang, kHttp500, kHttp503, kHttp429, kMalformed, kSpike };
constexpr int kFaultKindCount = 7;
// "drop", "hang", "http_500", "http_503", "http_429", "malformed", "spike".
const char* FaultKindName(FaultKind kind);

struct FaultDecision {
  bool drop = false;
  bool hang = false;
  int http_status = 0;  // 500, 503 or 429; 0 for none
  bool malformed = false;
  int malformed_variant = 0;  // see RenderMalformed
  bool spike = false;
  // True when the request is answered without reaching the engine.
  bool Immediate() const { return drop || hang || http_status != 0; }
};

class FaultInjector {
 public:
  explicit FaultInjector(const SimConfig& config);
  FaultDecision Decide();

 private:
  const double p429_, p500_, p503_, hang_, drop_, malformed_, spike_;
  const bool enabled_;
  std::mutex mu_;
  SimRng rng_;  // GUARDED_BY(mu_)
};

}  // namespace matrix::llm_sim
