// Keeps complaints about misbehaving peers from flooding a log: at most one
// line per peer per interval, and the line says how many were held back.
// Bounded: when more than `max_peers` peers are remembered, the oldest half
// is forgotten. Not thread-safe (one per daemon loop).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

namespace matrix {

class PeerLogLimiter {
 public:
  explicit PeerLogLimiter(int64_t interval_ms = 10'000, size_t max_peers = 4096)
      : interval_ms_(interval_ms), max_peers_(max_peers) {}

  // True when a line about `peer` may be logged now; *held_back is then the
  // number of complaints about it dropped since its last logged line.
  bool Allow(const std::string& peer, int64_t now_ms, int64_t* held_back) {
    auto it = peers_.find(peer);
    if (it != peers_.end() && now_ms - it->second.last_ms < interval_ms_) {
      ++it->second.held_back;
      return false;
    }
    if (it == peers_.end()) {
      if (peers_.size() >= max_peers_) Forget(now_ms);
      it = peers_.emplace(peer, Entry{}).first;
    }
    *held_back = it->second.held_back;
    it->second = Entry{now_ms, 0};
    return true;
  }

  // " (N more since the last report)" or "".
  static std::string HeldBack(int64_t n) {
    return n > 0 ? " (" + std::to_string(n) + " more since the last report)" : std::string();
  }

 private:
  struct Entry {
    int64_t last_ms = 0;
    int64_t held_back = 0;
  };
  void Forget(int64_t now_ms) {
    for (auto it = peers_.begin(); it != peers_.end();)
      it = now_ms - it->second.last_ms >= interval_ms_ || peers_.size() > max_peers_ / 2 ? peers_.erase(it)
                                                                                         : std::next(it);
  }

  int64_t interval_ms_;
  size_t max_peers_;
  std::unordered_map<std::string, Entry> peers_;
};

}  // namespace matrix
