// EnvPool: the worker's tool environments. An environment is any program that
// speaks the Model Context Protocol over stdio (JSON-RPC 2.0, one message per
// line), started in a sandbox (common/sandbox). Each task gets its own
// session, started when the task first needs it and kept across the task's
// hops until Release(); the task carries a ResourceLease naming the session
// and this worker, so its environment steps are routed back here.
//
// Session start: spawn, `initialize` (protocol 2025-06-18), the
// `notifications/initialized` notification, then, when the server lists the
// experimental capability "matrix/episode", `matrix/start_episode` with the
// task's input row and seed. Servers without it (any stock MCP server) just
// start. The same pool runs one-shot `exec` programs (JSON on stdin, JSON on
// stdout).
//
// Limits: at most `max_sessions` live sessions and `max_starting` starting
// ones; further Acquire() calls wait in order until one is released. Every call has a wall-clock deadline; past
// it the whole sandbox is killed and the session's pending calls fail with
// DeadlineExceeded. A process that exits fails its pending calls with
// Unavailable naming how it ended and the tail of its stderr. Sessions idle
// longer than `idle_timeout_s` (their task was lost elsewhere) are closed.
//
// Thread-safety: single-threaded; owned by the worker's event loop, which
// polls fd() and calls OnReadable() and Tick().
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/clock.h"
#include "common/base/json.h"
#include "common/base/status.h"
#include "common/sandbox/sandbox.h"

namespace matrix::config {
struct RoleConfig;
}

namespace matrix::worker {

// How to start one kind of environment (a tool role of the pipeline).
struct EnvSpec {
  std::string name;  // the tool role
  sandbox::Spec sandbox;  // workdir is set per session
  double call_timeout_s = 30;
  double start_timeout_s = 60;
};

// The environment of a tool or exec role.
EnvSpec EnvSpecFor(const config::RoleConfig& role);

class EnvPool {
 public:
  struct Options {
    std::string work_root;      // per-session folders <work_root>/<session>
    std::string holder;         // this worker's identity, written into leases
    size_t max_sessions = 1000;
    // Sessions starting at once (spawned, not yet initialized): starting a
    // program is its costly part, and a burst of them would take the CPU
    // from the daemons. 0: twice the number of cores, at least 4.
    size_t max_starting = 0;
    double idle_timeout_s = 3600;
    size_t max_line_bytes = 16 << 20;
    std::vector<std::string> hide;  // host paths no sandbox sees (the job's keys)
  };
  using Reply = std::function<void(StatusOr<Json>)>;      // a JSON-RPC result, or why not
  using Ready = std::function<void(StatusOr<std::string>)>;  // the session id
  using OneShotDone = std::function<void(StatusOr<std::string>)>;  // stdout of an exec program

  EnvPool(Options options, const Clock* clock);
  ~EnvPool();  // kills every process

  int fd() const { return epoll_fd_; }
  void OnReadable();
  // Deadlines, dead processes, idle sessions, waiting acquisitions.
  void Tick();

  // A new session of `spec` for a task; `ready` runs once it is initialized
  // (and its episode started), possibly after waiting for a free slot.
  void Acquire(const EnvSpec& spec, const std::string& task_id, const Json& input, uint64_t seed, Ready ready);
  bool Has(const std::string& session) const;
  // Why a recently ended session ended ("" when unknown).
  std::string Why(const std::string& session) const;
  // A JSON-RPC request on a live session; `reply` gets the result, or an
  // error: Unavailable (process gone), DeadlineExceeded (killed for
  // time), InvalidArgument (a JSON-RPC error object, message included).
  void Call(const std::string& session, const std::string& method, Json params, Reply reply);
  // Whether the server offered our episode extension (start_episode, reward).
  bool HasEpisode(const std::string& session) const;
  // Closes the session: its input is closed so it exits (killed after 2 s;
  // at once when calls are pending, which fail Cancelled).
  void Release(const std::string& session);
  void ReleaseAll();

  // The tools of `spec` (tools/list, every page), listed once per pool by a
  // short-lived session and cached.
  void ListTools(const EnvSpec& spec, std::function<void(StatusOr<Json>)> done);

  // Runs a one-shot program: `stdin_bytes` in, whole stdout out once it
  // exits with code 0 (otherwise Unavailable with how it ended).
  void RunOnce(const EnvSpec& spec, std::string stdin_bytes, OneShotDone done);

  struct Stats {
    size_t live = 0, waiting = 0, peak_live = 0;
    int64_t started = 0, failed_starts = 0, calls = 0, timeouts = 0, deaths = 0, one_shots = 0;
  };
  const Stats& stats() const { return stats_; }
  size_t live() const { return stats_.live; }
  size_t waiting() const { return waiters_.size(); }
  // Every session slot is taken and tasks wait for one (not merely for
  // their turn to start).
  bool full() const { return !waiters_.empty() && stats_.live >= options_.max_sessions; }
  // Process ids of every live sandbox (tests, metrics).
  std::vector<int> Pids() const;

 private:
  struct Pending {
    Reply reply;
    int64_t deadline_ns = 0;
    std::string method;
  };
  struct Proc {
    std::string id;
    bool one_shot = false;
    sandbox::Process process;
    std::string workdir;
    std::string in_buf;   // bytes not yet written to stdin
    std::string out_buf;  // bytes read, not yet a whole line
    int64_t next_request = 1;
    std::map<int64_t, Pending> pending;
    bool initialized = false;
    bool episode = false;
    bool dead = false;
    bool closing = false;  // released: input closed, waiting for it to exit
    int64_t dead_since_ns = 0;
    int64_t last_used_ns = 0;
    std::string died;  // why it is dead
    std::vector<Ready> on_ready;
    OneShotDone one_shot_done;
    int64_t one_shot_deadline_ns = 0;
    double call_timeout_s = 30;
    std::string task_id;
  };
  struct Waiter {
    EnvSpec spec;
    std::string task_id;
    Json input;
    uint64_t seed;
    Ready ready;
  };

  StatusOr<Proc*> SpawnProc(const EnvSpec& spec, const std::string& id, bool one_shot);
  void Start(Waiter w);
  // Starts waiting acquisitions while the limits allow.
  void StartWaiters();
  void Send(Proc& p, const std::string& method, Json params, Reply reply, double timeout_s);
  void Notify(Proc& p, const std::string& method, Json params);
  void Flush(Proc& p);
  void OnLine(Proc& p, const std::string& line);
  void Kill(Proc& p, Status why);
  void Finish(const std::string& id);  // removes a dead proc, frees its slot
  void Watch(Proc& p);
  void Unwatch(Proc& p);
  Proc* Find(const std::string& id);
  const Proc* Find(const std::string& id) const;

  Options options_;
  const Clock* clock_;
  int epoll_fd_ = -1;
  uint64_t next_session_ = 1;
  size_t starting_ = 0;  // counted sessions not yet initialized
  std::unordered_map<std::string, std::unique_ptr<Proc>> procs_;
  std::unordered_map<int, std::string> by_fd_;
  std::deque<Waiter> waiters_;
  std::map<std::string, Json> tools_cache_;
  std::unordered_map<std::string, std::string> ended_;  // session -> why (bounded)
  std::deque<std::string> ended_order_;
  std::map<std::string, std::vector<std::function<void(StatusOr<Json>)>>> tools_waiting_;
  Stats stats_;
};

}  // namespace matrix::worker
