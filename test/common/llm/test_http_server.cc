// TestHttpServer: single-threaded poll() loop serving scripted replies.
// Server-thread state: conns_, dues_, counters of ids; shared state: the
// request log (mu_) and the atomics.
#include "test/common/llm/test_http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/base/json.h"

namespace matrix::llm::test {
namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "TestHttpServer: %s: %s\n", what, std::strerror(errno));
  std::abort();
}

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 408:
      return "Request Timeout";
    case 422:
      return "Unprocessable Entity";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

void WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 100);
    } else {
      return;  // the peer is gone
    }
  }
}

}  // namespace

HttpReply HttpReply::Respond(int status, std::string body, int delay_ms) {
  HttpReply r;
  r.status = status;
  r.body = std::move(body);
  r.delay_ms = delay_ms;
  return r;
}

HttpReply HttpReply::Close(int delay_ms) {
  HttpReply r;
  r.action = Action::kClose;
  r.delay_ms = delay_ms;
  return r;
}

HttpReply HttpReply::Hang() {
  HttpReply r;
  r.action = Action::kHang;
  return r;
}

TestHttpServer::TestHttpServer(Handler handler) : handler_(std::move(handler)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) Die("socket");
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("bind");
  if (::listen(listen_fd_, 4096) != 0) Die("listen");
  socklen_t len = sizeof(addr);
  if (::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) Die("getsockname");
  port_ = ntohs(addr.sin_port);
  if (::pipe2(wake_, O_NONBLOCK | O_CLOEXEC) != 0) Die("pipe2");
  thread_ = std::thread([this] { Loop(); });
}

TestHttpServer::~TestHttpServer() {
  stop_ = true;
  char c = 'x';
  ssize_t n = ::write(wake_[1], &c, 1);
  (void)n;
  thread_.join();
  for (auto& [id, conn] : conns_) ::close(conn.fd);
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void TestHttpServer::ReleaseHeld() {
  release_ = true;
  char c = 'r';
  ssize_t n = ::write(wake_[1], &c, 1);
  (void)n;
}

std::string TestHttpServer::base_url() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/v1";
}

std::vector<HttpRequest> TestHttpServer::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

size_t TestHttpServer::request_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_.size();
}

void TestHttpServer::Loop() {
  std::vector<pollfd> fds;
  std::vector<int> ids;
  while (true) {
    fds.clear();
    ids.clear();
    fds.push_back({wake_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (auto& [id, conn] : conns_) {
      fds.push_back({conn.fd, POLLIN, 0});
      ids.push_back(id);
    }
    int timeout = -1;
    int64_t now = SteadyNanos();
    for (const Due& d : dues_) {
      if (d.held) continue;
      int64_t ms = d.at_ns <= now ? 0 : (d.at_ns - now + 999'999) / 1'000'000;
      timeout = timeout < 0 ? static_cast<int>(ms) : std::min(timeout, static_cast<int>(ms));
    }
    int rc = ::poll(fds.data(), fds.size(), timeout);
    if (rc < 0 && errno != EINTR) Die("poll");
    if (fds[0].revents) {
      char drain[64];
      while (::read(wake_[0], drain, sizeof(drain)) > 0) {
      }
      if (stop_) return;
      if (release_.exchange(false)) {
        for (Due& d : dues_) d.held = false;
      }
    }
    if (fds[1].revents & POLLIN) Accept();
    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto it = conns_.find(ids[i - 2]);
      if (it != conns_.end()) ReadFrom(it->second);
    }
    now = SteadyNanos();
    // Fire due replies in due order; Fire may add or drop entries, so take them out first.
    std::vector<Due> ready;
    for (auto it = dues_.begin(); it != dues_.end();) {
      if (!it->held && it->at_ns <= now) {
        ready.push_back(std::move(*it));
        it = dues_.erase(it);
      } else {
        ++it;
      }
    }
    std::stable_sort(ready.begin(), ready.end(),
                     [](const Due& a, const Due& b) { return a.at_ns < b.at_ns; });
    for (Due& d : ready) Fire(d);
  }
}

void TestHttpServer::Accept() {
  while (true) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Conn c;
    c.fd = fd;
    c.id = next_conn_id_++;
    conns_.emplace(c.id, std::move(c));
    connections_.fetch_add(1);
  }
}

void TestHttpServer::ReadFrom(Conn& c) {
  char buf[16384];
  while (true) {
    ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      c.in.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    CloseConn(c.id);  // peer closed or reset
    return;
  }
  while (ParseOne(c)) {
  }
}

bool TestHttpServer::ParseOne(Conn& c) {
  if (c.pending) return false;
  size_t head_end = c.in.find("\r\n\r\n");
  if (head_end == std::string::npos) return false;
  HttpRequest req;
  std::string head = c.in.substr(0, head_end);
  size_t line_end = head.find("\r\n");
  std::string request_line = head.substr(0, line_end);
  size_t sp1 = request_line.find(' ');
  size_t sp2 = request_line.find(' ', sp1 + 1);
  req.method = request_line.substr(0, sp1);
  req.path = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t next = head.find("\r\n", pos);
    if (next == std::string::npos) next = head.size();
    std::string line = head.substr(pos, next - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      size_t v = line.find_first_not_of(' ', colon + 1);
      req.headers[name] = v == std::string::npos ? "" : line.substr(v);
    }
    pos = next + 2;
  }
  size_t body_len = 0;
  auto cl = req.headers.find("content-length");
  if (cl != req.headers.end()) body_len = std::strtoul(cl->second.c_str(), nullptr, 10);
  if (c.in.size() < head_end + 4 + body_len) return false;
  req.body = c.in.substr(head_end + 4, body_len);
  c.in.erase(0, head_end + 4 + body_len);
  req.received_ns = SteadyNanos();
  req.connection = c.id;
  req.index = next_index_++;
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(req);
  }
  int now_active = active_.fetch_add(1) + 1;
  int prev = max_active_.load();
  while (now_active > prev && !max_active_.compare_exchange_weak(prev, now_active)) {
  }
  c.pending = true;
  HttpReply reply = handler_(req);
  if (reply.action == HttpReply::Action::kHang) return false;
  Due d;
  d.at_ns = req.received_ns + static_cast<int64_t>(reply.delay_ms) * 1'000'000;
  d.held = reply.hold;
  d.conn_id = c.id;
  d.reply = std::move(reply);
  dues_.push_back(std::move(d));
  return false;
}

void TestHttpServer::Fire(Due& d) {
  auto it = conns_.find(d.conn_id);
  if (it == conns_.end()) return;  // the client already left; counted in CloseConn
  Conn& c = it->second;
  if (d.reply.action == HttpReply::Action::kClose) {
    CloseConn(c.id);
    return;
  }
  const HttpReply& r = d.reply;
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + Reason(r.status) + "\r\n";
  out += "Content-Type: application/json\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  for (const auto& [name, value] : r.headers) out += name + ": " + value + "\r\n";
  if (r.close_after) out += "Connection: close\r\n";
  out += "\r\n";
  out += r.body;
  c.pending = false;
  active_.fetch_sub(1);
  WriteAll(c.fd, out);
  if (r.close_after) {
    ::close(c.fd);
    conns_.erase(it);
    return;
  }
  while (ParseOne(c)) {
  }
}

void TestHttpServer::CloseConn(int id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  if (it->second.pending) active_.fetch_sub(1);
  ::close(it->second.fd);
  conns_.erase(it);
  dues_.erase(
      std::remove_if(dues_.begin(), dues_.end(), [id](const Due& d) { return d.conn_id == id; }),
      dues_.end());
}

std::string CompletionBody(const std::string& content, const std::string& finish_reason,
                           int prompt_tokens, int completion_tokens) {
  Json body = {
      {"id", "chatcmpl-test"},
      {"object", "chat.completion"},
      {"model", "test-model"},
      {"choices", Json::array({{{"index", 0},
                                {"message", {{"role", "assistant"}, {"content", content}}},
                                {"finish_reason", finish_reason}}})},
      {"usage",
       {{"prompt_tokens", prompt_tokens},
        {"completion_tokens", completion_tokens},
        {"total_tokens", prompt_tokens + completion_tokens}}},
  };
  return body.dump();
}

int UnusedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("bind");
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace matrix::llm::test
