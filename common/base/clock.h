// Clock: every component takes its time from an injected Clock so tests can
// advance time instead of sleeping. Times are nanoseconds; NowNanos() is
// monotonic, WallMicros() is UNIX time for records.
// Thread-safety: SystemClock is stateless; FakeClock is safe to read from any
// thread and is advanced by the test thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace matrix {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowNanos() const = 0;
  virtual int64_t WallMicros() const = 0;
  int64_t NowMillis() const { return NowNanos() / 1'000'000; }
};

class SystemClock final : public Clock {
 public:
  int64_t NowNanos() const override;
  int64_t WallMicros() const override;
  // Process-wide instance.
  static SystemClock* Get();
};

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_nanos = 1'000'000'000) : now_(start_nanos) {}
  int64_t NowNanos() const override { return now_.load(); }
  int64_t WallMicros() const override { return 1'700'000'000'000'000 + now_.load() / 1000; }
  void AdvanceMillis(int64_t ms) { now_ += ms * 1'000'000; }
  void AdvanceNanos(int64_t ns) { now_ += ns; }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace matrix
