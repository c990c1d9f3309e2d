// ConcurrencyLimiter: additive-increase / multiplicative-decrease of one
// endpoint's concurrency limit, with windowed decreases.
// Thread-safety: single owner (see header).
#include "common/llm/concurrency_limiter.h"

#include <algorithm>
#include <cmath>

namespace matrix::llm {

ConcurrencyLimiter::ConcurrencyLimiter(AimdOptions options) : options_(options) {
  if (options_.ceiling < 1) options_.ceiling = 1;
  if (!(options_.decrease > 0 && options_.decrease < 1)) options_.decrease = 0.5;
  if (!(options_.increase > 0)) options_.increase = 1.0;
  if (!(options_.latency_decrease > 0 && options_.latency_decrease < 1))
    options_.latency_decrease = 0.9;
  if (!(options_.latency_weight > 0 && options_.latency_weight <= 1)) options_.latency_weight = 0.1;
  if (options_.initial_window_ns < 0) options_.initial_window_ns = 0;
  if (!(options_.decrease_share >= 0 && options_.decrease_share <= 1)) options_.decrease_share = 0.5;
  if (!(options_.share_weight > 0 && options_.share_weight <= 1)) options_.share_weight = 1.0 / 16;
  limit_ = options_.ceiling;
}

int ConcurrencyLimiter::cap() const { return std::max(1, static_cast<int>(std::floor(limit_))); }

int64_t ConcurrencyLimiter::window_ns() const {
  return mean_latency_ns_ > 0 ? mean_latency_ns_ : options_.initial_window_ns;
}

bool ConcurrencyLimiter::OnSuccess(int64_t start_ns, int64_t now_ns) {
  const int64_t sample = std::max<int64_t>(1, now_ns - start_ns);
  if (mean_latency_ns_ == 0) {
    mean_latency_ns_ = sample;
  } else {
    double mean = options_.latency_weight * static_cast<double>(sample) +
                  (1 - options_.latency_weight) * static_cast<double>(mean_latency_ns_);
    mean_latency_ns_ = std::max<int64_t>(1, std::llround(mean));
  }
  slowest_latency_ns_ = std::max(sample, slowest_latency_ns_ - slowest_latency_ns_ / 2048);
  ++successes_;
  overload_share_ *= 1 - options_.share_weight;
  if (!options_.enabled) return false;
  if (options_.latency_target_ns > 0 && mean_latency_ns_ > options_.latency_target_ns)
    return Decrease(options_.latency_decrease, start_ns, now_ns);
  const bool calm = overload_share_ < options_.calm_share;
  limit_ = std::min<double>(options_.ceiling, limit_ + options_.increase / (calm ? 1.0 : limit_));
  return false;
}

bool ConcurrencyLimiter::OnOverload(int64_t start_ns, int64_t now_ns) {
  overload_share_ = options_.share_weight + (1 - options_.share_weight) * overload_share_;
  if (!options_.enabled) return false;
  if (overload_share_ < options_.decrease_share) return false;  // scattered faults, not overload
  return Decrease(options_.decrease, start_ns, now_ns);
}

bool ConcurrencyLimiter::Decrease(double factor, int64_t start_ns, int64_t now_ns) {
  if (decreased_ && (start_ns < last_decrease_ns_ || now_ns - last_decrease_ns_ < window_ns()))
    return false;
  decreased_ = true;
  last_decrease_ns_ = now_ns;
  const double next = std::max(1.0, limit_ * factor);
  if (next == limit_) return false;
  limit_ = next;
  return true;
}

}  // namespace matrix::llm
