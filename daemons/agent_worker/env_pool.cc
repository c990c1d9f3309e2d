#include "daemons/agent_worker/env_pool.h"

#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/base/files.h"
#include "common/base/log.h"

namespace matrix::worker {
namespace {

constexpr char kProtocolVersion[] = "2025-06-18";
constexpr int64_t kReapGraceNs = 500'000'000;
constexpr int64_t kCloseGraceNs = 2'000'000'000;

std::string DumpLine(const Json& j) {
  return DumpJson(j) + "\n";
}

int64_t Seconds(double s) { return static_cast<int64_t>(s * 1e9); }

}  // namespace

EnvPool::EnvPool(Options options, const Clock* clock) : options_(std::move(options)), clock_(clock) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) LOG_ERROR << "epoll_create1: " << strerror(errno);
  // Sandboxes run as another user when started by root: they must be able to
  // pass through to their own folder (and nothing else in it).
  if (options_.max_starting == 0)
    options_.max_starting = std::max<size_t>(4, 2 * std::thread::hardware_concurrency());
  Status st = MakeDirs(options_.work_root, 0711);
  if (!st.ok()) LOG_ERROR << "environment folder: " << st.message();
  ::chmod(options_.work_root.c_str(), 0711);
}

EnvPool::~EnvPool() {
  for (auto& [id, p] : procs_) sandbox::KillTree(&p->process);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

EnvPool::Proc* EnvPool::Find(const std::string& id) {
  auto it = procs_.find(id);
  return it == procs_.end() ? nullptr : it->second.get();
}
const EnvPool::Proc* EnvPool::Find(const std::string& id) const {
  auto it = procs_.find(id);
  return it == procs_.end() ? nullptr : it->second.get();
}

bool EnvPool::Has(const std::string& session) const {
  const Proc* p = Find(session);
  return p && !p->dead && !p->closing && p->initialized;
}

std::string EnvPool::Why(const std::string& session) const {
  auto it = ended_.find(session);
  return it == ended_.end() ? "" : it->second;
}

bool EnvPool::HasEpisode(const std::string& session) const {
  const Proc* p = Find(session);
  return p && p->episode;
}

std::vector<int> EnvPool::Pids() const {
  std::vector<int> out;
  for (const auto& [id, p] : procs_)
    if (p->process.pid > 0) out.push_back(p->process.pid);
  return out;
}

void EnvPool::Watch(Proc& p) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.fd = p.process.out;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, p.process.out, &ev);
  by_fd_[p.process.out] = p.id;
}

void EnvPool::Unwatch(Proc& p) {
  for (int fd : {p.process.out, p.process.in}) {
    if (fd < 0) continue;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    by_fd_.erase(fd);
  }
}

StatusOr<EnvPool::Proc*> EnvPool::SpawnProc(const EnvSpec& spec, const std::string& id, bool one_shot) {
  auto proc = std::make_unique<Proc>();
  proc->id = id;
  proc->one_shot = one_shot;
  proc->call_timeout_s = spec.call_timeout_s;
  std::string leaf = id.substr(id.rfind('/') + 1);
  proc->workdir = options_.work_root + "/" + leaf;
  sandbox::Spec sb = spec.sandbox;
  sb.workdir = proc->workdir;
  sb.hide.insert(sb.hide.end(), options_.hide.begin(), options_.hide.end());
  for (auto& [k, v] : sb.env) {
    for (size_t at; (at = v.find("{workdir}")) != std::string::npos;) v.replace(at, 9, proc->workdir);
  }
  MATRIX_ASSIGN_OR_RETURN(proc->process, sandbox::Spawn(sb));
  proc->last_used_ns = clock_->NowNanos();
  Proc* raw = proc.get();
  procs_.emplace(id, std::move(proc));
  Watch(*raw);
  return raw;
}

void EnvPool::Acquire(const EnvSpec& spec, const std::string& task_id, const Json& input, uint64_t seed,
                      Ready ready) {
  Waiter w{spec, task_id, input, seed, std::move(ready)};
  if (stats_.live >= options_.max_sessions || starting_ >= options_.max_starting || !waiters_.empty()) {
    waiters_.push_back(std::move(w));
    return;
  }
  Start(std::move(w));
}

void EnvPool::StartWaiters() {
  while (!waiters_.empty() && stats_.live < options_.max_sessions && starting_ < options_.max_starting) {
    Waiter w = std::move(waiters_.front());
    waiters_.pop_front();
    Start(std::move(w));
  }
}

void EnvPool::Start(Waiter w) {
  std::string id = options_.holder + "/" + std::to_string(next_session_++);
  auto spawned = SpawnProc(w.spec, id, false);
  if (!spawned.ok()) {
    ++stats_.failed_starts;
    return w.ready(Unavailable("environment '" + w.spec.name + "' did not start: " + spawned.status().message()));
  }
  Proc& p = **spawned;
  p.task_id = w.task_id;
  ++stats_.started;
  ++stats_.live;
  ++starting_;
  stats_.peak_live = std::max(stats_.peak_live, stats_.live);
  p.on_ready.push_back(std::move(w.ready));
  Json init = {{"protocolVersion", kProtocolVersion},
               {"capabilities", Json::object()},
               {"clientInfo", {{"name", "matrix-worker"}, {"version", "1"}}}};
  Json input = std::move(w.input);
  uint64_t seed = w.seed;
  double start_timeout = w.spec.start_timeout_s;
  Send(p, "initialize", std::move(init),
       [this, id, input = std::move(input), seed, start_timeout](StatusOr<Json> res) mutable {
         Proc* p = Find(id);
         if (!p) return;
         if (!res.ok()) return Kill(*p, Unavailable("initialize failed: " + res.status().message()));
         const Json& caps = res->is_object() ? res->value("capabilities", Json::object()) : Json::object();
         p->episode = caps.is_object() && caps.contains("experimental") && caps["experimental"].is_object() &&
                      caps["experimental"].contains("matrix/episode");
         Notify(*p, "notifications/initialized", Json::object());
         auto ready = [this, id](StatusOr<Json> started) {
           Proc* p = Find(id);
           if (!p) return;
           if (!started.ok())
             return Kill(*p, Unavailable("matrix/start_episode failed: " + started.status().message()));
           p->initialized = true;
           if (starting_ > 0) --starting_;
           auto waiting = std::move(p->on_ready);
           p->on_ready.clear();
           for (auto& r : waiting) r(id);
           StartWaiters();
         };
         if (!p->episode) return ready(Json::object());
         Send(*p, "matrix/start_episode", {{"input", std::move(input)}, {"seed", seed}}, std::move(ready),
              start_timeout);
       },
       w.spec.start_timeout_s);
}

void EnvPool::Call(const std::string& session, const std::string& method, Json params, Reply reply) {
  Proc* p = Find(session);
  if (!p || p->dead || p->closing) {
    return reply(Unavailable("environment session " + session + " is gone" +
                             (p && !p->died.empty() ? ": " + p->died : "")));
  }
  ++stats_.calls;
  Send(*p, method, std::move(params), std::move(reply), p->call_timeout_s);
}

void EnvPool::Send(Proc& p, const std::string& method, Json params, Reply reply, double timeout_s) {
  int64_t id = p.next_request++;
  Json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
  p.in_buf += DumpLine(msg);
  p.pending[id] = Pending{std::move(reply), clock_->NowNanos() + Seconds(timeout_s), method};
  p.last_used_ns = clock_->NowNanos();
  Flush(p);
}

void EnvPool::Notify(Proc& p, const std::string& method, Json params) {
  p.in_buf += DumpLine({{"jsonrpc", "2.0"}, {"method", method}, {"params", std::move(params)}});
  Flush(p);
}

void EnvPool::Flush(Proc& p) {
  if (p.process.in < 0) return;
  while (!p.in_buf.empty()) {
    ssize_t n = ::write(p.process.in, p.in_buf.data(), p.in_buf.size());
    if (n > 0) {
      p.in_buf.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.fd = p.process.in;
      if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, p.process.in, &ev) != 0 && errno == EEXIST)
        ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, p.process.in, &ev);
      by_fd_[p.process.in] = p.id;
      return;
    }
    // EPIPE: the process is gone; its stdout EOF tells how.
    p.in_buf.clear();
    return;
  }
  if (by_fd_.count(p.process.in)) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, p.process.in, nullptr);
    by_fd_.erase(p.process.in);
  }
  if (p.one_shot && p.process.in >= 0) {
    ::close(p.process.in);  // end of the program's input
    p.process.in = -1;
  }
}

void EnvPool::OnReadable() {
  epoll_event events[64];
  while (true) {
    int n = ::epoll_wait(epoll_fd_, events, 64, 0);
    if (n <= 0) return;
    for (int i = 0; i < n; ++i) {
      auto it = by_fd_.find(events[i].data.fd);
      if (it == by_fd_.end()) continue;
      std::string id = it->second;
      Proc* p = Find(id);
      if (!p) continue;
      if (events[i].data.fd == p->process.in) {
        Flush(*p);
        continue;
      }
      char buf[65536];
      while (p && !p->dead) {
        ssize_t r = ::read(p->process.out, buf, sizeof(buf));
        if (r > 0) {
          p->out_buf.append(buf, static_cast<size_t>(r));
          if (p->one_shot) {
            if (p->out_buf.size() > options_.max_line_bytes) {
              Kill(*p, InvalidArgument("wrote more than " + std::to_string(options_.max_line_bytes) + " bytes"));
              break;
            }
            continue;
          }
          size_t start = 0, nl;
          while (p && (nl = p->out_buf.find('\n', start)) != std::string::npos) {
            std::string line = p->out_buf.substr(start, nl - start);
            start = nl + 1;
            OnLine(*p, line);
            p = Find(id);  // a reply callback may release the session
          }
          if (!p) break;
          p->out_buf.erase(0, start);
          if (p->out_buf.size() > options_.max_line_bytes) {
            Kill(*p, InvalidArgument("sent a line longer than " + std::to_string(options_.max_line_bytes) + " bytes"));
            break;
          }
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) break;
        // EOF: the program closed its output, normally by exiting.
        Unwatch(*p);
        p->dead = true;
        p->dead_since_ns = clock_->NowNanos();
        break;
      }
    }
    if (n < 64) return;
  }
}

void EnvPool::OnLine(Proc& p, const std::string& line) {
  if (line.find_first_not_of(" \t\r") == std::string::npos) return;
  Json msg = Json::parse(line, nullptr, false);
  if (msg.is_discarded() || !msg.is_object()) {
    LOG_WARN << "environment " << p.id << ": ignoring a line that is not JSON (" << line.size() << " bytes)";
    return;
  }
  if (msg.contains("method")) {
    // A request or notification from the server. Requests get an answer so
    // the server does not wait: ping is answered, the rest are not offered.
    if (!msg.contains("id")) return;
    Json reply = {{"jsonrpc", "2.0"}, {"id", msg["id"]}};
    if (msg["method"] == "ping") reply["result"] = Json::object();
    else reply["error"] = {{"code", -32601}, {"message", "method not supported by this client"}};
    p.in_buf += DumpLine(reply);
    Flush(p);
    return;
  }
  if (!msg.contains("id") || !msg["id"].is_number_integer()) return;
  auto it = p.pending.find(msg["id"].get<int64_t>());
  if (it == p.pending.end()) return;
  Reply reply = std::move(it->second.reply);
  p.pending.erase(it);
  p.last_used_ns = clock_->NowNanos();
  if (msg.contains("error")) {
    const Json& e = msg["error"];
    std::string text = e.is_object() ? e.value("message", DumpJson(e)) : DumpJson(e);
    if (e.is_object() && e.contains("code")) text += " (code " + DumpJson(e["code"]) + ")";
    return reply(InvalidArgument(text));
  }
  reply(msg.contains("result") ? std::move(msg["result"]) : Json(nullptr));
}

void EnvPool::Kill(Proc& p, Status why) {
  std::string id = p.id;
  if (p.process.pid > 0) {
    Unwatch(p);
    sandbox::KillTree(&p.process);
  }
  p.dead = true;
  p.died = why.message();
  ended_[id] = p.died;
  ended_order_.push_back(id);
  if (ended_order_.size() > 10000) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
  // Callbacks may call back into the pool: take them out first.
  auto pending = std::move(p.pending);
  p.pending.clear();
  auto ready = std::move(p.on_ready);
  p.on_ready.clear();
  auto one_shot = std::move(p.one_shot_done);
  p.one_shot_done = nullptr;
  Finish(id);
  for (auto& [rid, pend] : pending) pend.reply(why);
  for (auto& r : ready) r(why);
  if (one_shot) one_shot(why);
}

void EnvPool::Finish(const std::string& id) {
  auto it = procs_.find(id);
  if (it == procs_.end()) return;
  Proc& p = *it->second;
  Unwatch(p);
  sandbox::KillTree(&p.process);
  bool counted = !p.one_shot && p.task_id != "";
  std::error_code ignored;
  std::filesystem::remove_all(p.workdir, ignored);
  const bool was_starting = counted && !p.initialized;
  procs_.erase(it);
  if (counted && stats_.live > 0) --stats_.live;
  if (was_starting && starting_ > 0) --starting_;
  StartWaiters();
}

void EnvPool::Release(const std::string& session) {
  Proc* p = Find(session);
  if (!p || p->closing) return;
  if (!p->initialized || p->dead || p->one_shot || !p->pending.empty() || p->process.in < 0) {
    return Kill(*p, Status(StatusCode::kCancelled, "environment session released"));
  }
  // A stdio MCP server ends when its input closes: it may finish its work,
  // and its CPU time reaches the worker's accounting when it is reaped.
  // Killed if it has not exited within kCloseGraceNs. Its slot is free now.
  Unwatch(*p);
  ::close(p->process.in);
  p->process.in = -1;
  p->closing = true;
  p->dead_since_ns = clock_->NowNanos();
  p->task_id.clear();  // no longer counted
  if (stats_.live > 0) --stats_.live;
  StartWaiters();
}

void EnvPool::ReleaseAll() {
  waiters_.clear();
  std::vector<std::string> ids;
  for (auto& [id, p] : procs_) ids.push_back(id);
  for (auto& id : ids) Release(id);
}

void EnvPool::Tick() {
  const int64_t now = clock_->NowNanos();
  std::vector<std::pair<std::string, Status>> kill;
  std::vector<std::string> exited;
  for (auto& [id, pp] : procs_) {
    Proc& p = *pp;
    if (p.dead || p.closing) {
      exited.push_back(id);
      continue;
    }
    for (auto& [rid, pend] : p.pending) {
      if (now > pend.deadline_ns) {
        ++stats_.timeouts;
        kill.emplace_back(id, DeadlineExceeded(pend.method + " ran past its limit of " +
                                               std::to_string(static_cast<int64_t>(p.call_timeout_s)) +
                                               " s; the environment was killed"));
        break;
      }
    }
    if (p.one_shot && p.one_shot_deadline_ns > 0 && now > p.one_shot_deadline_ns) {
      ++stats_.timeouts;
      kill.emplace_back(id, DeadlineExceeded("ran past its limit of " +
                                             std::to_string(static_cast<int64_t>(p.call_timeout_s)) +
                                             " s and was killed"));
    } else if (!p.one_shot && p.initialized && p.pending.empty() &&
               now - p.last_used_ns > Seconds(options_.idle_timeout_s)) {
      kill.emplace_back(id, Status(StatusCode::kCancelled, "idle environment session closed"));
    }
  }
  for (auto& [id, why] : kill)
    if (Proc* p = Find(id)) Kill(*p, why);
  for (const auto& id : exited) {
    Proc* p = Find(id);
    if (!p) continue;
    int status = 0;
    int pid = p->process.pid;
    bool reaped = pid <= 0;
    if (!reaped) {
      pid_t r = ::waitpid(pid, &status, WNOHANG);
      reaped = r == pid || (r < 0 && errno == ECHILD);
      if (reaped) p->process.pid = -1;
    }
    if (p->closing) {
      if (reaped || now - p->dead_since_ns > kCloseGraceNs) Finish(id);
      continue;
    }
    if (!reaped && now - p->dead_since_ns < kReapGraceNs) continue;
    std::string how = reaped ? sandbox::DescribeExit(status) : "closed its output";
    if (p->one_shot && reaped && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      auto done = std::move(p->one_shot_done);
      std::string out = std::move(p->out_buf);
      p->one_shot_done = nullptr;
      Finish(id);
      if (done) done(std::move(out));
      continue;
    }
    ++stats_.deaths;
    std::string tail = sandbox::StderrTail(p->workdir);
    Kill(*p, Unavailable("environment process ended (" + how + ")" + (tail.empty() ? "" : ": " + tail)));
  }
}

void EnvPool::ListTools(const EnvSpec& spec, std::function<void(StatusOr<Json>)> done) {
  auto cached = tools_cache_.find(spec.name);
  if (cached != tools_cache_.end()) return done(cached->second);
  auto& waiting = tools_waiting_[spec.name];
  waiting.push_back(std::move(done));
  if (waiting.size() > 1) return;
  std::string id = options_.holder + "/tools-" + std::to_string(next_session_++);
  auto spawned = SpawnProc(spec, id, false);
  std::string name = spec.name;
  auto finish = [this, name](StatusOr<Json> tools) {
    if (tools.ok()) tools_cache_[name] = *tools;
    auto cbs = std::move(tools_waiting_[name]);
    tools_waiting_.erase(name);
    for (auto& cb : cbs) cb(tools);
  };
  if (!spawned.ok()) return finish(spawned.status());
  Proc& p = **spawned;
  Json init = {{"protocolVersion", kProtocolVersion},
               {"capabilities", Json::object()},
               {"clientInfo", {{"name", "matrix-worker"}, {"version", "1"}}}};
  auto all = std::make_shared<Json>(Json::array());
  // tools/list, page after page (at most 100 pages).
  auto page = std::make_shared<std::function<void(Json)>>();
  *page = [this, id, all, finish, page](Json cursor) {
    Proc* p = Find(id);
    if (!p) return finish(Unavailable("environment exited while listing its tools"));
    Json params = Json::object();
    if (!cursor.is_null()) params["cursor"] = cursor;
    Send(*p, "tools/list", params, [this, id, all, finish, page](StatusOr<Json> res) {
      if (!res.ok()) {
        finish(Unavailable("tools/list: " + res.status().message()));
        Release(id);
        *page = nullptr;
        return;
      }
      if (res->is_object() && (*res)["tools"].is_array())
        for (auto& t : (*res)["tools"]) all->push_back(t);
      Json next = res->is_object() ? res->value("nextCursor", Json(nullptr)) : Json(nullptr);
      if (!next.is_null() && all->size() < 100000) return (*page)(next);
      finish(*all);
      Release(id);
      *page = nullptr;  // breaks the self-reference
    }, p->call_timeout_s);
  };
  Send(p, "initialize", std::move(init), [this, id, finish, page](StatusOr<Json> res) {
    Proc* p = Find(id);
    if (!res.ok() || !p) {
      finish(Unavailable("initialize: " + (res.ok() ? std::string("process gone") : res.status().message())));
      *page = nullptr;
      if (p) Release(id);
      return;
    }
    Notify(*p, "notifications/initialized", Json::object());
    (*page)(Json(nullptr));
  }, spec.start_timeout_s);
}

void EnvPool::RunOnce(const EnvSpec& spec, std::string stdin_bytes, OneShotDone done) {
  std::string id = options_.holder + "/exec-" + std::to_string(next_session_++);
  auto spawned = SpawnProc(spec, id, true);
  if (!spawned.ok()) return done(spawned.status());
  Proc& p = **spawned;
  ++stats_.one_shots;
  p.one_shot_done = std::move(done);
  p.one_shot_deadline_ns = clock_->NowNanos() + Seconds(spec.call_timeout_s);
  p.in_buf = std::move(stdin_bytes);
  Flush(p);
}

}  // namespace matrix::worker
