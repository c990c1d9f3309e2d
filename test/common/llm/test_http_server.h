// TestHttpServer: a scripted HTTP/1.1 server on 127.0.0.1 for LLM client
// tests. One thread, POSIX sockets and poll(); keep-alive connections; a
// handler decides each request's reply (status, headers, body, delay, close
// without answering, or never answer). The server records every request and
// the largest number of requests it held unanswered at once (the handler may
// read active(), which counts the request it is deciding on).
// Thread-safety: the handler runs on the server thread; every accessor may be
// called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace matrix::llm::test {

struct HttpRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  int64_t received_ns = 0;  // steady clock
  int connection = 0;       // accept order, from 0
  int index = 0;            // arrival order, from 0
};

struct HttpReply {
  enum class Action {
    kRespond,  // send the reply after delay_ms
    kClose,    // close the connection after delay_ms without answering
    kHang,     // never answer (the connection stays open until the peer leaves)
  };
  Action action = Action::kRespond;
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  int delay_ms = 0;
  bool hold = false;         // wait for ReleaseHeld() instead of delay_ms
  bool close_after = false;  // "Connection: close" and close once sent

  static HttpReply Respond(int status, std::string body, int delay_ms = 0);
  static HttpReply Close(int delay_ms = 0);
  static HttpReply Hang();
};

class TestHttpServer {
 public:
  using Handler = std::function<HttpReply(const HttpRequest&)>;

  // Binds 127.0.0.1 on an ephemeral port and starts serving. Aborts the test
  // binary when the socket cannot be set up.
  explicit TestHttpServer(Handler handler);
  ~TestHttpServer();

  // Sends every reply marked `hold` that has been requested so far.
  void ReleaseHeld();

  int port() const { return port_; }
  std::string base_url() const;  // "http://127.0.0.1:<port>/v1"

  std::vector<HttpRequest> requests() const;
  size_t request_count() const;
  int active() const { return active_.load(); }          // requests held unanswered now
  int max_active() const { return max_active_.load(); }  // the most ever held at once
  // Restarts max_active() from the requests held now, to measure one phase of a test.
  void ResetMaxActive() { max_active_.store(active_.load()); }
  int connections() const { return connections_.load(); }

 private:
  struct Conn {
    int fd = -1;
    int id = 0;
    std::string in;
    bool pending = false;  // a request awaits its reply
  };
  struct Due {
    int64_t at_ns = 0;  // ignored while held
    bool held = false;
    int conn_id = 0;
    HttpReply reply;
  };
  void Loop();
  void Accept();
  void ReadFrom(Conn& c);
  bool ParseOne(Conn& c);
  void Fire(Due& d);
  void CloseConn(int id);

  Handler handler_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> release_{false};

  mutable std::mutex mu_;
  std::vector<HttpRequest> requests_;  // GUARDED_BY(mu_)
  std::atomic<int> active_{0};
  std::atomic<int> max_active_{0};
  std::atomic<int> connections_{0};

  // Server thread only.
  std::map<int, Conn> conns_;
  std::vector<Due> dues_;
  int next_conn_id_ = 0;
  int next_index_ = 0;
};

// A chat-completion body with one choice.
std::string CompletionBody(const std::string& content, const std::string& finish_reason = "stop",
                           int prompt_tokens = 7, int completion_tokens = 3);

// An unused local port: bound, read back and closed again.
int UnusedPort();

}  // namespace matrix::llm::test
