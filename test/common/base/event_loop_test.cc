#include "common/base/event_loop.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "common/base/signals.h"

namespace matrix {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kLongWait = 5'000 * kMs;  // a test that waits this long has failed

std::unique_ptr<EventLoop> NewLoop(const Clock* clock) {
  auto loop = EventLoop::Create(clock);
  EXPECT_TRUE(loop.ok()) << loop.status().ToString();
  return std::move(*loop);
}

struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    r = fds[0];
    w = fds[1];
  }
  ~Pipe() {
    ::close(r);
    ::close(w);
  }
  void Put(const std::string& s) const { EXPECT_EQ(::write(w, s.data(), s.size()), static_cast<ssize_t>(s.size())); }
  std::string Take() const {
    char buf[64];
    ssize_t n = ::read(r, buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
};

TEST(EventLoopTest, RunsTheHandlerOfAReadyFdAndOnlyThat) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  Pipe a, b;
  std::vector<std::string> seen;
  ASSERT_TRUE(loop->Watch(a.r, EPOLLIN, [&](uint32_t ev) {
                    EXPECT_TRUE(ev & EPOLLIN);
                    seen.push_back("a:" + a.Take());
                  }).ok());
  ASSERT_TRUE(loop->Watch(b.r, EPOLLIN, [&](uint32_t) { seen.push_back("b:" + b.Take()); }).ok());
  b.Put("x");
  loop->RunOnce(kLongWait);
  EXPECT_EQ(seen, std::vector<std::string>({"b:x"}));
  // Nothing ready: a turn with no wait runs no handler.
  loop->RunOnce(0);
  EXPECT_EQ(seen.size(), 1u);
  // Unwatched, a ready fd no longer runs its handler.
  loop->Unwatch(b.r);
  b.Put("y");
  a.Put("z");
  loop->RunOnce(kLongWait);
  EXPECT_EQ(seen, std::vector<std::string>({"b:x", "a:z"}));
  EXPECT_EQ(loop->Modify(b.r, EPOLLIN).code(), StatusCode::kNotFound);
}

TEST(EventLoopTest, AHandlerMayUnwatchItsOwnFdAndAnother) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  Pipe a, b;
  int calls = 0;
  auto handler = [&](uint32_t) {
    ++calls;
    loop->Unwatch(a.r);
    loop->Unwatch(b.r);
  };
  ASSERT_TRUE(loop->Watch(a.r, EPOLLIN, handler).ok());
  ASSERT_TRUE(loop->Watch(b.r, EPOLLIN, handler).ok());
  a.Put("1");
  b.Put("2");
  loop->RunOnce(kLongWait);
  EXPECT_EQ(calls, 1);  // the second ready fd was unwatched by the first handler
  loop->RunOnce(0);
  EXPECT_EQ(calls, 1);
}

TEST(EventLoopTest, AClosedAndReusedFdNumberCanBeWatchedAgain) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_TRUE(loop->Watch(fds[0], EPOLLIN, [](uint32_t) { ADD_FAILURE() << "closed"; }).ok());
  // Closed without Unwatch: the kernel drops it from the set, the loop does not know.
  ::close(fds[0]);
  ::close(fds[1]);
  Pipe again;  // the lowest free numbers: the same ones
  ASSERT_EQ(again.r, fds[0]);
  int calls = 0;
  ASSERT_TRUE(loop->Watch(again.r, EPOLLIN, [&](uint32_t) { again.Take(), ++calls; }).ok());
  again.Put("x");
  loop->RunOnce(kLongWait);
  EXPECT_EQ(calls, 1);
}

TEST(EventLoopTest, TimersFollowTheInjectedClockInDueOrder) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  std::vector<std::string> fired;
  loop->After(30 * kMs, [&] { fired.push_back("30"); });
  loop->After(10 * kMs, [&] { fired.push_back("10"); });
  auto cancelled = loop->After(20 * kMs, [&] { fired.push_back("20"); });
  auto every = loop->Every(15 * kMs, [&] { fired.push_back("every"); });
  loop->Cancel(cancelled);
  loop->RunOnce(0);
  EXPECT_TRUE(fired.empty());
  clock.AdvanceMillis(10);
  loop->RunOnce(0);
  EXPECT_EQ(fired, std::vector<std::string>({"10"}));
  clock.AdvanceMillis(20);  // 30 ms: the periodic one (15) and the 30 ms one
  loop->RunOnce(0);
  EXPECT_EQ(fired, std::vector<std::string>({"10", "every", "30"}));
  clock.AdvanceMillis(15);
  loop->RunOnce(0);
  EXPECT_EQ(fired.back(), "every");
  EXPECT_EQ(fired.size(), 4u);
  loop->Cancel(every);
  clock.AdvanceMillis(100);
  loop->RunOnce(0);
  EXPECT_EQ(fired.size(), 4u);
}

TEST(EventLoopTest, ATimerMayArmAndCancelTimers) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  int chained = 0;
  EventLoop::TimerId victim = 0;
  loop->After(kMs, [&] {
    loop->Cancel(victim);
    loop->After(0, [&] { ++chained; });  // due now, runs in the next turn
  });
  victim = loop->After(kMs, [&] { ADD_FAILURE() << "cancelled by the first timer"; });
  clock.AdvanceMillis(1);
  loop->RunOnce(0);
  EXPECT_EQ(chained, 0);
  loop->RunOnce(0);
  EXPECT_EQ(chained, 1);
}

TEST(EventLoopTest, PostFromAnotherThreadWakesAWaitingLoop) {
  SystemClock clock;
  auto loop = NewLoop(&clock);
  std::atomic<int> ran{0};
  std::thread poster([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    loop->Post([&] {
      ++ran;
      loop->Stop();
    });
  });
  loop->Run();  // returns only once the posted work stopped it
  poster.join();
  EXPECT_EQ(ran.load(), 1);
}

TEST(EventLoopTest, StopFromAnotherThreadEndsRun) {
  SystemClock clock;
  auto loop = NewLoop(&clock);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    loop->Stop();
  });
  loop->Run();
  stopper.join();
  EXPECT_TRUE(loop->stopping());
}

TEST(EventLoopTest, EdgeWatchesRunWhilePendingWithoutWaiting) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  Pipe hint;
  int queued = 3, handled = 0;
  ASSERT_TRUE(loop->WatchEdge(hint.r, [&] { return queued > 0; }, [&] {
                    --queued;
                    ++handled;
                  }).ok());
  // Each turn handles one; none waits, though the fd never becomes ready.
  for (int i = 0; i < 3; ++i) loop->RunOnce(kLongWait);
  EXPECT_EQ(handled, 3);
  loop->Unwatch(hint.r);
  queued = 1;
  loop->RunOnce(0);
  EXPECT_EQ(handled, 3);
}

TEST(EventLoopTest, TurnHooksRunEveryTurnAndBoundTheWait) {
  FakeClock clock;
  auto loop = NewLoop(&clock);
  int turns = 0;
  loop->EachTurn([&] {
    ++turns;
    return int64_t{0};  // work left: do not wait
  });
  loop->RunOnce(-1);
  loop->RunOnce(-1);
  EXPECT_EQ(turns, 2);
}

TEST(EventLoopTest, SignalsArriveAsEvents) {
  auto fd = CreateSignalFd({SIGUSR2});
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  FakeClock clock;
  auto loop = NewLoop(&clock);
  int got = 0;
  ASSERT_TRUE(loop->WatchSignals(*fd, [&](int sig) { got = sig; }).ok());
  ASSERT_EQ(::raise(SIGUSR2), 0);  // to this thread, which blocks it
  loop->RunOnce(kLongWait);
  EXPECT_EQ(got, SIGUSR2);
  ::close(*fd);
}

}  // namespace
}  // namespace matrix
