// Load generator: one thread, non-blocking sockets, edge-triggered epoll.
#include "test/daemons/llm_sim/load_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace matrix::llm_sim::testing {
namespace {

using SteadyClock = std::chrono::steady_clock;

enum class State { kIdle, kConnecting, kSending, kReceiving, kDone, kFailed };

struct Conn {
  int fd = -1;
  State state = State::kIdle;
  size_t out_off = 0;
  std::string out;
  std::string in;
  int requests_done = 0;
  bool eof = false;
  SteadyClock::time_point sent_at;
};

struct Response {
  int status = 0;
  std::string body;
  bool close = false;
  size_t consumed = 0;
};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// True when `in` starts with a complete response (interim 100 responses are
// skipped and removed).
bool ParseResponse(std::string* in, Response* r) {
  while (true) {
    size_t head_end = in->find("\r\n\r\n");
    if (head_end == std::string::npos) return false;
    if (in->size() < 12 || in->compare(0, 5, "HTTP/") != 0) {
      r->status = -1;
      return false;
    }
    r->status = std::atoi(in->c_str() + 9);
    if (r->status == 100) {
      in->erase(0, head_end + 4);
      continue;
    }
    const std::string head = Lower(in->substr(0, head_end + 2));
    const size_t body_start = head_end + 4;
    r->close = head.find("\r\nconnection: close\r\n") != std::string::npos;
    r->body.clear();
    size_t cl = head.find("\r\ncontent-length:");
    if (cl != std::string::npos) {
      size_t length = std::strtoul(head.c_str() + cl + 17, nullptr, 10);
      if (in->size() < body_start + length) return false;
      r->body = in->substr(body_start, length);
      r->consumed = body_start + length;
      return true;
    }
    if (head.find("\r\ntransfer-encoding: chunked\r\n") != std::string::npos) {
      size_t pos = body_start;
      while (true) {
        size_t line_end = in->find("\r\n", pos);
        if (line_end == std::string::npos) return false;
        size_t size = std::strtoul(in->c_str() + pos, nullptr, 16);
        pos = line_end + 2;
        if (size == 0) {
          if (in->size() < pos + 2) return false;
          r->consumed = pos + 2;
          return true;
        }
        if (in->size() < pos + size + 2) return false;
        r->body.append(*in, pos, size);
        pos += size + 2;
      }
    }
    r->status = -1;  // no framing: not produced by the servers under test
    return false;
  }
}

}  // namespace

double LoadResult::Percentile(double p) const {
  if (latency_ms.empty()) return 0;
  std::vector<double> v = latency_ms;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

StatusOr<LoadResult> RunLoad(const LoadOptions& o) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) return Unavailable(std::string("epoll_create1: ") + std::strerror(errno));

  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(o.port));
  if (inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1) {
    close(epfd);
    return InvalidArgument("not an IPv4 address: " + o.host);
  }
  auto make_request = [&](const std::string& body) {
    return "POST " + o.path + " HTTP/1.1\r\nHost: " + o.host + ":" + std::to_string(o.port) +
           "\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  const std::string shared_request = make_request(o.body);

  LoadResult result;
  const int n = o.connections;
  std::vector<Conn> conns(static_cast<size_t>(n));
  int next = 0, connecting = 0, open = 0, finished = 0;
  const auto start = SteadyClock::now();
  const auto deadline = start + std::chrono::milliseconds(o.timeout_ms);

  auto close_conn = [&](Conn& c) {
    if (c.fd >= 0) {
      close(c.fd);
      c.fd = -1;
      --open;
    }
  };
  auto fail = [&](Conn& c, const std::string& why) {
    if (c.state == State::kConnecting) --connecting;
    c.state = State::kFailed;
    ++result.failed_connections;
    ++finished;
    if (result.error_samples.size() < 10) result.error_samples.push_back(why);
    close_conn(c);
  };
  auto start_request = [&](Conn& c) {
    c.state = State::kSending;
    c.out_off = 0;
    if (o.body_for) c.out = make_request(o.body_for(static_cast<int>(&c - conns.data()), c.requests_done));
    c.sent_at = SteadyClock::now();
  };

  // Drives one connection as far as its socket allows.
  auto progress = [&](Conn& c, uint32_t events) {
    if (c.state == State::kConnecting) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        fail(c, std::string("connect: ") + std::strerror(err));
        return;
      }
      --connecting;
      start_request(c);
    }
    while (c.state == State::kSending || c.state == State::kReceiving) {
      if (c.state == State::kSending) {
        const std::string& request = o.body_for ? c.out : shared_request;
        while (c.out_off < request.size()) {
          ssize_t w = send(c.fd, request.data() + c.out_off, request.size() - c.out_off, MSG_NOSIGNAL);
          if (w > 0) {
            c.out_off += static_cast<size_t>(w);
          } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
          } else {
            fail(c, std::string("send: ") + std::strerror(errno));
            return;
          }
        }
        c.state = State::kReceiving;
      }
      char buf[65536];
      while (!c.eof) {
        ssize_t r = recv(c.fd, buf, sizeof(buf), 0);
        if (r > 0) {
          c.in.append(buf, static_cast<size_t>(r));
        } else if (r == 0) {
          c.eof = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          break;
        } else {
          fail(c, std::string("recv: ") + std::strerror(errno));
          return;
        }
      }
      Response resp;
      if (!ParseResponse(&c.in, &resp)) {
        if (resp.status < 0) {
          fail(c, "unparseable response: " + c.in.substr(0, 80));
        } else if (c.eof) {
          fail(c, c.in.empty() ? "connection closed without a response"
                               : "connection closed mid-response");
        }
        return;
      }
      c.in.erase(0, resp.consumed);
      ++result.responses;
      ++result.by_status[resp.status];
      if (resp.status == 200) ++result.ok;
      result.latency_ms.push_back(
          std::chrono::duration<double, std::milli>(SteadyClock::now() - c.sent_at).count());
      if (o.keep_bodies) result.bodies.push_back(std::move(resp.body));
      ++c.requests_done;
      if (c.requests_done < o.requests_per_connection && !resp.close && !c.eof) {
        start_request(c);
        continue;
      }
      c.state = State::kDone;
      ++finished;
      if (!o.hold_open || resp.close || c.eof) close_conn(c);
      return;
    }
  };

  auto start_more = [&] {
    while (connecting < o.max_connecting && next < n) {
      Conn& c = conns[static_cast<size_t>(next)];
      const int index = next++;
      c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (c.fd < 0) {
        fail(c, std::string("socket: ") + std::strerror(errno));
        continue;
      }
      ++open;
      result.peak_open = std::max(result.peak_open, open);
      int one = 1;
      setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      c.state = State::kConnecting;
      ++connecting;
      if (connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
          errno != EINPROGRESS) {
        fail(c, std::string("connect: ") + std::strerror(errno));
        continue;
      }
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
      ev.data.u32 = static_cast<uint32_t>(index);
      if (epoll_ctl(epfd, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
        fail(c, std::string("epoll_ctl: ") + std::strerror(errno));
        continue;
      }
    }
  };

  std::vector<epoll_event> events(1024);
  while (finished < n) {
    start_more();
    const auto now = SteadyClock::now();
    if (now >= deadline) {
      for (Conn& c : conns)
        if (c.state != State::kDone && c.state != State::kFailed) fail(c, "timeout");
      break;
    }
    int wait_ms = static_cast<int>(
        std::min<int64_t>(100, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1));
    int got = epoll_wait(epfd, events.data(), static_cast<int>(events.size()), wait_ms);
    if (got < 0 && errno != EINTR) break;
    for (int i = 0; i < got; ++i) {
      Conn& c = conns[events[static_cast<size_t>(i)].data.u32];
      if (c.state == State::kDone || c.state == State::kFailed) continue;
      progress(c, events[static_cast<size_t>(i)].events);
    }
  }
  result.wall_ms = std::chrono::duration<double, std::milli>(SteadyClock::now() - start).count();
  for (Conn& c : conns) close_conn(c);
  close(epfd);
  return result;
}

}  // namespace matrix::llm_sim::testing
