// FaultInjector: per-request fault decisions from one seeded RNG.
#include "daemons/llm_sim/sim_faults.h"

namespace matrix::llm_sim {

const char* FaultKindName(FaultKind kind) {
  switch (kind) {
    case FaultKind::kDrop: return "drop";
    case FaultKind::kHang: return "hang";
    case FaultKind::kHttp500: return "http_500";
    case FaultKind::kHttp503: return "http_503";
    case FaultKind::kHttp429: return "http_429";
    case FaultKind::kMalformed: return "malformed";
    case FaultKind::kSpike: return "spike";
  }
  return "unknown";
}

FaultInjector::FaultInjector(const SimConfig& c)
    : p429_(c.fault_429),
      p500_(c.fault_500),
      p503_(c.fault_503),
      hang_(c.fault_hang),
      drop_(c.fault_drop),
      malformed_(c.fault_malformed),
      spike_(c.spike_prob),
      enabled_(c.fault_429 > 0 || c.fault_500 > 0 || c.fault_503 > 0 || c.fault_hang > 0 ||
               c.fault_drop > 0 || c.fault_malformed > 0 || c.spike_prob > 0),
      rng_(c.fault_seed) {}

FaultDecision FaultInjector::Decide() {
  FaultDecision d;
  if (!enabled_) return d;
  double u[8];
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (double& x : u) x = rng_.Uniform();
  }
  const bool f429 = u[0] < p429_, f500 = u[1] < p500_, f503 = u[2] < p503_;
  d.hang = u[3] < hang_;
  d.drop = u[4] < drop_;
  d.malformed = u[5] < malformed_;
  d.spike = u[6] < spike_;
  d.malformed_variant = u[7] < 0.5 ? 0 : 1;
  if (d.drop) {
    d.hang = false;
  } else if (!d.hang) {
    d.http_status = f500 ? 500 : f503 ? 503 : f429 ? 429 : 0;
  }
  if (d.Immediate()) {
    d.malformed = false;
    d.spike = false;
  }
  return d;
}

}  // namespace matrix::llm_sim
