// Sandboxed child processes for tool environments and `exec` programs.
//
// A Spec says what to run and how it is confined; Spawn() starts it with
// pipes on stdin and stdout (stderr goes to <workdir>/stderr.log) in a
// process group of its own, and KillTree() ends the whole group.
//
// Confinement by kind:
//   bwrap      bubblewrap: read-only view of the host's root, private /tmp,
//              /dev and /proc, the private writable `workdir` (also $HOME and
//              the working directory), every namespace unshared (no network
//              unless `network`: then the host's network is shared),
//              --die-with-parent and --new-session. Limits are applied inside
//              the sandbox with prlimit(1) (address space, CPU seconds,
//              processes, file size, open files), so the process limit counts
//              the sandbox's own processes only. Started as root, the child
//              first drops to nobody (65534), which is what makes the
//              read-only root binding mean something.
//   apptainer  `apptainer exec --contain --cleanenv --no-home` of `image` with
//              `workdir` bound, `--net --network none` unless `network`; the
//              same prlimit wrapper inside. For clusters that have Apptainer.
//   none       a plain child process with the limits set by setrlimit; no
//              isolation of files or network. Only when asked explicitly.
// Every kind: the child gets SIGKILL when the spawning thread's process dies
// (PR_SET_PDEATHSIG), so nothing outlives its worker.
//
// Thread-safety: functions are reentrant; Spawn forks, so call it from a
// thread that lives as long as the children (the parent-death signal is tied
// to the spawning thread).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix::sandbox {

enum class Kind { kBwrap, kApptainer, kNone };
const char* KindName(Kind kind);
// "bwrap" | "apptainer" | "none"
StatusOr<Kind> ParseKind(const std::string& name);

struct Limits {
  int64_t memory_mb = 1024;    // address space
  int64_t cpu_s = 0;           // CPU seconds; 0 = none
  int64_t max_processes = 64;  // processes and threads of the sandbox
  int64_t max_file_mb = 256;   // largest file it may write
  int64_t max_open_files = 256;
};

struct Spec {
  Kind kind = Kind::kBwrap;
  std::vector<std::string> command;  // argv; command[0] resolved on PATH inside
  bool network = false;
  Limits limits;
  std::string workdir;  // REQUIRED: private writable folder (created, owned by the child's user)
  std::string image;    // apptainer image (kind == kApptainer)
  std::vector<std::string> hide;  // host paths replaced by an empty tmpfs (e.g. the job's keys)
  std::vector<std::pair<std::string, std::string>> env;  // extra environment
};

struct Process {
  pid_t pid = -1;  // also the process group id
  int in = -1;     // write end of the child's stdin (non-blocking, close-on-exec)
  int out = -1;    // read end of the child's stdout (non-blocking, close-on-exec)
};

// The argv that Spawn executes (the sandbox launcher and its options, then
// the command). Exposed for tests and logs.
std::vector<std::string> BuildArgv(const Spec& spec);

// Starts the command. The caller owns the fds and must reap the child
// (KillTree or Reap).
StatusOr<Process> Spawn(const Spec& spec);

// SIGKILL to the child's process group and the child, then reaps it.
void KillTree(Process* p);
// Closes the pipes; non-blocking reap. True once the child is reaped (its
// exit status in *status when given).
bool Reap(Process* p, int* status = nullptr);
// Human text for a wait status: "exit code 3", "killed by signal 9 (SIGKILL)".
std::string DescribeExit(int status);

// The last `max_bytes` of the child's stderr log (for error messages).
std::string StderrTail(const std::string& workdir, size_t max_bytes = 400);

}  // namespace matrix::sandbox
