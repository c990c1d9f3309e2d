// Child processes of `matrix run` / `matrix node`: started by fork+exec with
// output to a log file, watched by PID, restarted when they die unexpectedly
// (after a back-off that doubles with each death soon after a start), given
// up on after too many such deaths in a row, and stopped with SIGTERM then
// SIGKILL after a grace period.
// Thread-safety: not thread-safe; owned by the CLI's main loop.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix::cli {

struct ChildSpec {
  std::string name;               // "broker", "worker-0", ...
  std::vector<std::string> argv;  // argv[0] is the executable path
  std::string log_path;
  bool restart = true;            // restart when it exits while the run goes on
  int stop_signal = 15;           // what Stop() sends first (SIGTERM; SIGUSR1 for `--stop-signal usr1`)
  bool die_with_parent = true;    // SIGKILL when the supervisor dies (PR_SET_PDEATHSIG)
};

// When a child that keeps dying is given up on.
struct RestartPolicy {
  double fast_s = 10;          // a death this soon after a start counts as fast
  int max_fast_deaths = 5;     // fast deaths in a row before giving up
  double first_backoff_s = 0.2;
  double max_backoff_s = 10;
};

class Supervisor {
 public:
  explicit Supervisor(RestartPolicy policy = {}) : policy_(policy) {}
  ~Supervisor();
  Status Start(const ChildSpec& spec);
  // Reaps exited children; restarts those with restart=true unless stopping
  // (each after its back-off, so call this regularly). Returns the names of
  // children that exited since the last call.
  std::vector<std::string> Reap(bool restart);
  // Why the supervisor gave up on a child ("worker-0 died 5 times within
  // 10 s of starting (exit code 1); its last log line: ..."); empty while none.
  const std::string& gave_up() const { return gave_up_; }
  pid_t Pid(const std::string& name) const;
  bool Running(const std::string& name) const;
  int restarts() const { return restarts_; }
  // Each child's stop signal to the named children (all when empty), wait up to grace_ms, then
  // SIGKILL. A signal arriving on `interrupt_fd` (a signalfd) while waiting
  // ends the wait at once: a second Ctrl-C means now.
  void Stop(const std::vector<std::string>& names, int grace_ms, int interrupt_fd = -1);
  void StopAll(int grace_ms) { Stop({}, grace_ms); }

 private:
  struct Child {
    ChildSpec spec;
    pid_t pid = -1;
    int exit_code = -1;
    int64_t started_ms = 0;
    int fast_deaths = 0;          // in a row
    int64_t restart_at_ms = -1;   // a restart is due then; -1: none pending
  };
  Status Spawn(Child& child);
  RestartPolicy policy_;
  std::vector<Child> children_;
  int restarts_ = 0;
  std::string gave_up_;
};

// The directory holding this executable (siblings are the daemons).
std::string SelfDir();

}  // namespace matrix::cli
