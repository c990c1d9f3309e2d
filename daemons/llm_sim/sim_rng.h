// SimRng: a small deterministic generator (SplitMix64) whose output is the
// same on every platform and standard library, so a request's seed always
// yields the same text, lengths and decisions. Not for security.
// Thread-safety: a value type; one owner at a time.
#pragma once

#include <cstdint>

namespace matrix::llm_sim {

class SimRng {
 public:
  explicit SimRng(uint64_t seed) : state_(seed) {}

  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n); 0 when n <= 0.
  int64_t Below(int64_t n) {
    if (n <= 0) return 0;
    return static_cast<int64_t>(Next() % static_cast<uint64_t>(n));
  }
  // Uniform integer in [lo, hi].
  int64_t Range(int64_t lo, int64_t hi) { return lo + Below(hi - lo + 1); }

 private:
  uint64_t state_;
};

// Derives an independent stream for one purpose from a request seed.
inline uint64_t SubSeed(uint64_t seed, uint64_t purpose) {
  SimRng rng(seed ^ (purpose * 0xd1b54a32d192ed03ULL));
  rng.Next();
  return rng.Next();
}

}  // namespace matrix::llm_sim
