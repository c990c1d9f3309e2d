// Child processes of `matrix run` / `matrix node`: started by fork+exec with
// output to a log file, watched by PID, restarted when they die unexpectedly,
// and stopped with SIGTERM then SIGKILL after a grace period.
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
  bool die_with_parent = false;   // SIGKILL when the supervisor dies (PR_SET_PDEATHSIG)
};

class Supervisor {
 public:
  ~Supervisor();
  Status Start(const ChildSpec& spec);
  // Reaps exited children; restarts those with restart=true unless stopping.
  // Returns the names of children that exited since the last call.
  std::vector<std::string> Reap(bool restart);
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
  };
  Status Spawn(Child& child);
  std::vector<Child> children_;
  int restarts_ = 0;
};

// The directory holding this executable (siblings are the daemons).
std::string SelfDir();

}  // namespace matrix::cli
