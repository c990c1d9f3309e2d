#include "common/base/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/base/log.h"
#include "common/base/signals.h"

namespace matrix {

StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(const Clock* clock) {
  std::unique_ptr<EventLoop> loop(new EventLoop(clock));
  loop->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (loop->epoll_fd_ < 0) return Internal(std::string("epoll_create1: ") + std::strerror(errno));
  loop->wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (loop->wake_fd_ < 0) return Internal(std::string("eventfd: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = loop->wake_fd_;
  if (::epoll_ctl(loop->epoll_fd_, EPOLL_CTL_ADD, loop->wake_fd_, &ev) != 0)
    return Internal(std::string("epoll_ctl: ") + std::strerror(errno));
  return loop;
}

EventLoop::~EventLoop() {
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

namespace {

// EPOLL_CTL_ADD or _MOD as the kernel's set has it: a number closed and
// reused behind the loop's back may be there already, or gone from it.
Status Control(int epoll_fd, int fd, uint32_t events, bool known) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_fd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) == 0) return Status::Ok();
  const int err = errno;
  if ((err == ENOENT || err == EEXIST) &&
      ::epoll_ctl(epoll_fd, known ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) == 0)
    return Status::Ok();
  return Internal("epoll_ctl on fd " + std::to_string(fd) + ": " + std::strerror(err));
}

}  // namespace

Status EventLoop::Watch(int fd, uint32_t events, FdHandler handler) {
  MATRIX_RETURN_IF_ERROR(Control(epoll_fd_, fd, events, fds_.count(fd) > 0));
  fds_[fd] = std::make_shared<FdWatch>(FdWatch{events, std::move(handler)});
  return Status::Ok();
}

Status EventLoop::Modify(int fd, uint32_t events) {
  auto it = fds_.find(fd);
  if (it == fds_.end()) return NotFound("fd " + std::to_string(fd) + " is not watched");
  if (it->second->events == events) return Status::Ok();
  MATRIX_RETURN_IF_ERROR(Control(epoll_fd_, fd, events, true));
  it->second->events = events;
  return Status::Ok();
}

void EventLoop::Unwatch(int fd) {
  if (fds_.erase(fd) > 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  edges_.erase(std::remove_if(edges_.begin(), edges_.end(), [fd](const auto& e) { return e->fd == fd; }),
               edges_.end());
}

Status EventLoop::WatchEdge(int fd, std::function<bool()> pending, std::function<void()> handler) {
  auto edge = std::make_shared<EdgeWatch>(EdgeWatch{fd, std::move(pending), std::move(handler)});
  // Readiness of the fd only ends the wait and hints; the edge pass asks.
  MATRIX_RETURN_IF_ERROR(Watch(fd, EPOLLIN, [edge = edge.get()](uint32_t) { edge->hinted = true; }));
  edges_.push_back(std::move(edge));
  return Status::Ok();
}

Status EventLoop::WatchSignals(int signal_fd, std::function<void(int sig)> handler) {
  return Watch(signal_fd, EPOLLIN, [signal_fd, handler = std::move(handler)](uint32_t) {
    handler(ReadSignal(signal_fd));
  });
}

EventLoop::TimerId EventLoop::At(int64_t due_ns, std::function<void()> fn) {
  const TimerId id = next_timer_++;
  timers_.emplace(id, Timer{0, std::move(fn)});
  due_.emplace(due_ns, id);
  return id;
}

EventLoop::TimerId EventLoop::After(int64_t delay_ns, std::function<void()> fn) {
  return At(clock_->NowNanos() + delay_ns, std::move(fn));
}

EventLoop::TimerId EventLoop::Every(int64_t period_ns, std::function<void()> fn) {
  const TimerId id = next_timer_++;
  period_ns = std::max<int64_t>(period_ns, 1);
  timers_.emplace(id, Timer{period_ns, std::move(fn)});
  due_.emplace(clock_->NowNanos() + period_ns, id);
  return id;
}

void EventLoop::Cancel(TimerId id) { timers_.erase(id); }

void EventLoop::EachTurn(std::function<int64_t()> hook) { hooks_.push_back(std::move(hook)); }

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(posted_mu_);
    posted_.push_back(std::move(fn));
  }
  has_posted_.store(true, std::memory_order_release);
  if (!InLoopThread()) Wake();
}

void EventLoop::Wake() {
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void EventLoop::Stop() {
  stop_.store(true, std::memory_order_release);
  if (!InLoopThread()) Wake();
}

void EventLoop::RunPosted() {
  if (!has_posted_.load(std::memory_order_acquire)) return;
  {
    std::lock_guard<std::mutex> lock(posted_mu_);
    running_.swap(posted_);
    has_posted_.store(false, std::memory_order_release);
  }
  for (auto& fn : running_) fn();
  running_.clear();
}

void EventLoop::FireTimers() {
  const int64_t now = clock_->NowNanos();
  // Timers armed by a firing timer wait for the next turn, even when due now.
  for (size_t n = due_.size(); n > 0 && !due_.empty() && due_.top().first <= now; --n) {
    const TimerId id = due_.top().second;
    due_.pop();
    auto it = timers_.find(id);
    if (it == timers_.end()) continue;  // cancelled
    if (it->second.period_ns > 0) {
      due_.emplace(now + it->second.period_ns, id);
      auto fn = it->second.fn;  // the timer may cancel itself
      fn();
    } else {
      auto fn = std::move(it->second.fn);
      timers_.erase(it);
      fn();
    }
  }
  // Cancelled timers leave entries behind; drop those at the front.
  while (!due_.empty() && timers_.count(due_.top().second) == 0) due_.pop();
}

int64_t EventLoop::WaitNanos(int64_t max_wait_ns) {
  int64_t wait = max_wait_ns;
  auto bound = [&wait](int64_t ns) {
    if (ns < 0) return;
    wait = wait < 0 ? ns : std::min(wait, ns);
  };
  for (auto& hook : hooks_) bound(hook());
  // Asked once per turn: the edge pass trusts a yes, and asks again only
  // where the wait brought a hint.
  bool input = false;
  for (auto& edge : edges_) {
    edge->ready = edge->pending();
    edge->hinted = false;
    input |= edge->ready;
  }
  if (input || stopping() || has_posted_.load(std::memory_order_acquire)) return 0;
  if (!due_.empty()) bound(std::max<int64_t>(0, due_.top().first - clock_->NowNanos()));
  return wait;
}

void EventLoop::RunOnce(int64_t max_wait_ns) {
  loop_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  RunPosted();
  FireTimers();
  const int64_t wait_ns = WaitNanos(max_wait_ns);
  // Rounded up: waking before a timer is due would spin until it is.
  const int wait_ms = wait_ns < 0 ? -1 : static_cast<int>(std::min<int64_t>((wait_ns + 999'999) / 1'000'000, 60'000));
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  const int n = ::epoll_wait(epoll_fd_, events, kMaxEvents, wait_ms);
  if (n < 0 && errno != EINTR) LOG_ERROR << "epoll_wait: " << std::strerror(errno);
  for (int i = 0; i < n; ++i) {
    const int fd = events[i].data.fd;
    if (fd == wake_fd_) {
      uint64_t count = 0;
      (void)!::read(wake_fd_, &count, sizeof count);
      continue;
    }
    auto it = fds_.find(fd);
    if (it == fds_.end()) continue;  // unwatched by an earlier handler of this turn
    std::shared_ptr<FdWatch> watch = it->second;  // the handler may unwatch its own fd
    watch->handler(events[i].events);
  }
  // By index: a handler may add or remove edge watches (a new one is
  // neither ready nor hinted until the next turn's wait).
  for (size_t i = 0; i < edges_.size(); ++i) {
    std::shared_ptr<EdgeWatch> edge = edges_[i];
    if (edge->ready || (edge->hinted && edge->pending())) edge->handler();
  }
}

void EventLoop::Run() {
  while (!stopping()) RunOnce(-1);
}

}  // namespace matrix
