// EventLoop: the one loop every daemon runs on. epoll over file descriptors,
// timers on the injected Clock, signals as events (a signalfd), work posted
// from other threads (an eventfd wakes the loop), and per-turn hooks for
// work that is cheaper to do once per turn than per event.
//
// A turn: run posted work -> fire due timers -> run the turn hooks -> wait
// in epoll_wait until a watched fd is ready, the next timer or hook deadline,
// or a wake-up -> run the handlers of the ready fds -> run the handlers of
// edge watches whose source has input. A wake-up costs in proportion
// to the fds that are ready, not to the number watched.
//
// Edge watches are for fds that only say "something may have changed", such
// as ZeroMQ's ZMQ_FD: the loop asks `pending()` once before it waits (a yes
// means no wait and a handler run after it) and again after the wait only
// where the fd became readable; while it says yes, the handler runs every
// turn without waiting.
//
// Thread-safety: Post(), Wake() and Stop() may be called from any thread;
// everything else only from the thread that runs the loop (or before it
// runs). Handlers run on the loop's thread and may watch, unwatch, arm and
// cancel freely, their own watch included.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/base/clock.h"
#include "common/base/status.h"

namespace matrix {

class EventLoop {
 public:
  using FdHandler = std::function<void(uint32_t events)>;  // EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP
  using TimerId = uint64_t;

  static StatusOr<std::unique_ptr<EventLoop>> Create(const Clock* clock);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  const Clock& clock() const { return *clock_; }

  // Watches `fd` for `events` (level-triggered), replacing any earlier watch
  // of it. kInternal when the kernel refuses the fd.
  Status Watch(int fd, uint32_t events, FdHandler handler);
  // Changes the events of a watched fd; kNotFound when it is not watched.
  Status Modify(int fd, uint32_t events);
  // Forgets `fd` (call before closing it); a no-op when it is not watched.
  void Unwatch(int fd);
  // An fd whose readiness only hints at input that `pending()` confirms.
  Status WatchEdge(int fd, std::function<bool()> pending, std::function<void()> handler);
  // A signalfd (see signals.h): `handler` gets each signal's number. Any
  // other readable fd counts as a stop request and gives 0.
  Status WatchSignals(int signal_fd, std::function<void(int sig)> handler);

  // Runs `fn` once on the loop's thread when the clock reaches `due_ns`
  // (Clock::NowNanos()), or `delay_ns` from now.
  TimerId At(int64_t due_ns, std::function<void()> fn);
  TimerId After(int64_t delay_ns, std::function<void()> fn);
  // Runs `fn` every `period_ns`, first `period_ns` from now, until cancelled.
  TimerId Every(int64_t period_ns, std::function<void()> fn);
  // A timer that has fired (one-shot) or was cancelled is a no-op.
  void Cancel(TimerId id);

  // Runs `hook` at the start of every turn, before the wait. It returns the
  // longest the loop may then wait, in nanoseconds (-1: no bound of its own).
  void EachTurn(std::function<int64_t()> hook);

  // Any thread: `fn` runs on the loop's thread in its next turn.
  void Post(std::function<void()> fn);
  // Any thread: ends the current or next wait at once.
  void Wake();
  // Any thread: Run() returns after the turn it is in.
  void Stop();
  bool stopping() const { return stop_.load(std::memory_order_acquire); }

  // Turns until Stop().
  void Run();
  // One turn, waiting at most `max_wait_ns` (0: not at all, -1: as long as
  // nothing is due).
  void RunOnce(int64_t max_wait_ns);
  // Whether the caller is on the thread that runs (or last ran) the loop;
  // false before its first turn.
  bool InLoopThread() const { return std::this_thread::get_id() == loop_thread_.load(std::memory_order_relaxed); }

 private:
  struct FdWatch {
    uint32_t events = 0;
    FdHandler handler;
  };
  struct EdgeWatch {
    int fd = -1;
    std::function<bool()> pending;
    std::function<void()> handler;
    bool ready = false;   // pending() said yes before this turn's wait
    bool hinted = false;  // the fd became readable in this turn's wait
  };
  struct Timer {
    int64_t period_ns = 0;  // 0: one-shot
    std::function<void()> fn;
  };
  using Due = std::pair<int64_t, TimerId>;

  explicit EventLoop(const Clock* clock) : clock_(clock) {}
  void RunPosted();
  void FireTimers();
  int64_t WaitNanos(int64_t max_wait_ns);

  const Clock* clock_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<std::thread::id> loop_thread_{};
  // Shared so a handler that unwatches its own fd runs to its end.
  std::unordered_map<int, std::shared_ptr<FdWatch>> fds_;
  std::vector<std::shared_ptr<EdgeWatch>> edges_;
  std::vector<std::function<int64_t()>> hooks_;
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due_;
  std::unordered_map<TimerId, Timer> timers_;
  TimerId next_timer_ = 1;
  std::mutex posted_mu_;
  std::vector<std::function<void()>> posted_;  // guarded by posted_mu_
  std::vector<std::function<void()>> running_;  // RunPosted's scratch
  std::atomic<bool> has_posted_{false};
};

}  // namespace matrix
