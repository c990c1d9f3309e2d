#include "common/sandbox/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/base/files.h"

namespace matrix::sandbox {
namespace {

constexpr uid_t kNobody = 65534;
constexpr char kPath[] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

std::vector<std::string> PrlimitArgs(const Limits& l) {
  std::vector<std::string> a = {"/usr/bin/prlimit"};
  if (l.memory_mb > 0) a.push_back("--as=" + std::to_string(l.memory_mb * 1024 * 1024));
  if (l.cpu_s > 0) a.push_back("--cpu=" + std::to_string(l.cpu_s));
  if (l.max_processes > 0) a.push_back("--nproc=" + std::to_string(l.max_processes));
  if (l.max_file_mb > 0) a.push_back("--fsize=" + std::to_string(l.max_file_mb * 1024 * 1024));
  if (l.max_open_files > 0) a.push_back("--nofile=" + std::to_string(l.max_open_files));
  a.push_back("--");
  return a;
}

// What the child of Spawn needs, prepared before clone().
struct ChildArgs {
  int in, out, log;
  bool drop;
  pid_t parent;
  Limits limits;
  Kind kind;
  const char* exe;
  char** argv;
  char** envp;
};

[[noreturn]] void ChildFail(int fd, const char* what, long err) {
  // The child shares the parent's memory until exec: raw system calls only.
  char buf[128];
  size_t n = 0;
  auto put = [&](const char* s) {
    while (*s && n < sizeof(buf) - 1) buf[n++] = *s++;
  };
  put("sandbox: ");
  put(what);
  put(" failed, errno ");
  char num[16];
  int k = 0;
  long e = err < 0 ? -err : err;
  do {
    num[k++] = static_cast<char>('0' + e % 10);
    e /= 10;
  } while (e && k < 15);
  while (k) buf[n < sizeof(buf) - 1 ? n++ : n] = num[--k];
  put("\n");
  if (fd >= 0) ::syscall(SYS_write, fd, buf, n);
  ::syscall(SYS_exit, 127);
  __builtin_unreachable();
}

long Sys(long nr, long a = 0, long b = 0, long c = 0, long d = 0) {
  long r = ::syscall(nr, a, b, c, d);
  return r < 0 ? -errno : r;
}

int ChildMain(void* raw) {
  const ChildArgs& a = *static_cast<const ChildArgs*>(raw);
  Sys(SYS_setsid);
  if (Sys(SYS_dup2, a.in, 0) < 0 || Sys(SYS_dup2, a.out, 1) < 0) ChildFail(a.log, "dup2", 0);
  if (a.log >= 0) Sys(SYS_dup2, a.log, 2);
  // The worker blocks signals for its signalfd and ignores some: defaults here.
  uint64_t none = 0;
  Sys(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&none), 0, sizeof(none));
  struct KernelSigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)();
    uint64_t mask;
  } dfl{SIG_DFL, 0, nullptr, 0};
  for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGCHLD, SIGHUP, SIGUSR1, SIGUSR2})
    Sys(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, sizeof(uint64_t));
  // Sandboxed programs yield the CPU to the daemons that drive them.
  Sys(SYS_setpriority, PRIO_PROCESS, 0, 10);
  if (a.drop) {
    long r;
    if ((r = Sys(SYS_setgroups, 0, 0)) < 0) ChildFail(2, "setgroups", r);
    if ((r = Sys(SYS_setresgid, kNobody, kNobody, kNobody)) < 0) ChildFail(2, "setresgid", r);
    if ((r = Sys(SYS_setresuid, kNobody, kNobody, kNobody)) < 0) ChildFail(2, "setresuid", r);
  }
  // After the credential change, which clears it.
  Sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (Sys(SYS_getppid) != a.parent) Sys(SYS_exit, 127);
  if (a.kind == Kind::kNone) {
    auto limit = [](int resource, int64_t value) {
      rlimit r{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
      Sys(SYS_setrlimit, resource, reinterpret_cast<long>(&r));
    };
    const Limits& lim = a.limits;
    if (lim.memory_mb > 0) limit(RLIMIT_AS, lim.memory_mb * 1024 * 1024);
    if (lim.cpu_s > 0) limit(RLIMIT_CPU, lim.cpu_s);
    if (lim.max_file_mb > 0) limit(RLIMIT_FSIZE, lim.max_file_mb * 1024 * 1024);
    if (lim.max_open_files > 0) limit(RLIMIT_NOFILE, lim.max_open_files);
    if (lim.max_processes > 0 && !a.drop && Sys(SYS_geteuid) != 0) limit(RLIMIT_NPROC, lim.max_processes);
  }
  long r = Sys(SYS_execve, reinterpret_cast<long>(a.exe), reinterpret_cast<long>(a.argv),
               reinterpret_cast<long>(a.envp));
  ChildFail(2, "exec", r);
}

// argv[0] as execvp would find it on the worker's PATH.
std::string ResolveOnPath(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::string dirs = path && *path ? path : kPath;
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t colon = dirs.find(':', start);
    std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    std::string full = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(full.c_str(), X_OK) == 0) return full;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return "";
}

}  // namespace

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kBwrap: return "bwrap";
    case Kind::kApptainer: return "apptainer";
    case Kind::kNone: return "none";
  }
  return "?";
}

StatusOr<Kind> ParseKind(const std::string& name) {
  if (name == "bwrap" || name == "bubblewrap") return Kind::kBwrap;
  if (name == "apptainer" || name == "singularity") return Kind::kApptainer;
  if (name == "none") return Kind::kNone;
  return InvalidArgument("unknown sandbox '" + name + "' (bwrap, apptainer, none)");
}

std::vector<std::string> BuildArgv(const Spec& spec) {
  std::vector<std::string> argv;
  switch (spec.kind) {
    case Kind::kBwrap: {
      argv = {"bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"};
      // A program or script that lives under /tmp (a checkout there, say)
      // stays visible, read-only, under the private /tmp: the whole top
      // folder it is in (/tmp/<top>), as everything outside /tmp is, so its
      // modules and data next to it are found too.
      std::vector<std::string> shown;
      for (const auto& arg : spec.command) {
        if (arg.rfind("/tmp/", 0) != 0 || !FileExists(arg)) continue;
        const size_t end = arg.find('/', 5);
        if (end == std::string::npos) continue;  // a file directly in /tmp: nothing to show but it
        const std::string dir = arg.substr(0, end);
        if (std::find(shown.begin(), shown.end(), dir) != shown.end()) continue;
        shown.push_back(dir);
        argv.insert(argv.end(), {"--ro-bind", dir, dir});
      }
      // Hidden paths last among the mounts above: nothing shown uncovers them.
      for (const auto& h : spec.hide) {
        argv.insert(argv.end(), {"--tmpfs", h});
      }
      argv.insert(argv.end(), {"--bind", spec.workdir, spec.workdir, "--chdir", spec.workdir, "--unshare-all"});
      if (spec.network) argv.push_back("--share-net");
      argv.insert(argv.end(), {"--die-with-parent", "--new-session", "--"});
      auto lim = PrlimitArgs(spec.limits);
      argv.insert(argv.end(), lim.begin(), lim.end());
      break;
    }
    case Kind::kApptainer: {
      argv = {"apptainer", "exec", "--contain", "--cleanenv", "--no-home", "--bind", spec.workdir,
              "--pwd", spec.workdir};
      if (!spec.network) argv.insert(argv.end(), {"--net", "--network", "none"});
      argv.push_back(spec.image);
      auto lim = PrlimitArgs(spec.limits);
      argv.insert(argv.end(), lim.begin(), lim.end());
      break;
    }
    case Kind::kNone:
      break;
  }
  argv.insert(argv.end(), spec.command.begin(), spec.command.end());
  return argv;
}

StatusOr<Process> Spawn(const Spec& spec) {
  if (spec.command.empty() || spec.command[0].empty()) return InvalidArgument("sandbox: empty command");
  if (spec.workdir.empty()) return InvalidArgument("sandbox: no work directory");
  if (spec.kind == Kind::kApptainer && spec.image.empty())
    return InvalidArgument("sandbox: apptainer needs an image");
  MATRIX_RETURN_IF_ERROR(MakeDirs(spec.workdir, 0700));
  const bool drop = ::geteuid() == 0 && spec.kind == Kind::kBwrap;
  if (drop && ::chown(spec.workdir.c_str(), kNobody, kNobody) != 0)
    return Internal("sandbox: chown " + spec.workdir + ": " + strerror(errno));

  // Everything the child needs is prepared before fork (no allocation after).
  std::vector<std::string> args = BuildArgv(spec);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> envs = {std::string("PATH=") + kPath, "HOME=" + spec.workdir, "LANG=C.UTF-8",
                                   "TMPDIR=/tmp"};
  for (const auto& [k, v] : spec.env) envs.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string log_path = spec.workdir + "/stderr.log";

  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) return Internal(std::string("sandbox: pipe: ") + strerror(errno));
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    return Internal(std::string("sandbox: pipe: ") + strerror(errno));
  }
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd >= 0 && drop) (void)!::fchown(log_fd, kNobody, kNobody);
  // The program is resolved here: the child may only make system calls.
  std::string exe = ResolveOnPath(args[0]);
  if (exe.empty()) {
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], log_fd})
      if (fd >= 0) ::close(fd);
    return NotFound("sandbox: " + args[0] + " not found on PATH" +
                    (spec.kind == Kind::kBwrap ? " (apt-get install bubblewrap)" : ""));
  }
  ChildArgs child{in_pipe[0], out_pipe[1], log_fd, drop, ::getpid(), spec.limits, spec.kind,
                  exe.c_str(), argv.data(), envp.data()};
  // clone(CLONE_VM | CLONE_VFORK): no copy of the worker's page tables (a
  // fork of a large worker stalls its event loop); the parent thread waits
  // only until the child has called exec.
  std::vector<char> stack(256 * 1024);
  pid_t pid = ::clone(ChildMain, stack.data() + stack.size(), CLONE_VM | CLONE_VFORK | SIGCHLD, &child);
  if (pid < 0) {
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], log_fd})
      if (fd >= 0) ::close(fd);
    return Unavailable(std::string("sandbox: clone: ") + strerror(errno));
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (log_fd >= 0) ::close(log_fd);
  ::fcntl(in_pipe[1], F_SETFL, ::fcntl(in_pipe[1], F_GETFL) | O_NONBLOCK);
  ::fcntl(out_pipe[0], F_SETFL, ::fcntl(out_pipe[0], F_GETFL) | O_NONBLOCK);
  Process p;
  p.pid = pid;
  p.in = in_pipe[1];
  p.out = out_pipe[0];
  return p;
}

bool Reap(Process* p, int* status) {
  if (p->in >= 0) ::close(p->in);
  if (p->out >= 0) ::close(p->out);
  p->in = p->out = -1;
  if (p->pid <= 0) return true;
  int st = 0;
  pid_t r = ::waitpid(p->pid, &st, WNOHANG);
  if (r == p->pid || (r < 0 && errno == ECHILD)) {
    if (status) *status = st;
    p->pid = -1;
    return true;
  }
  return false;
}

void KillTree(Process* p) {
  if (p->pid > 0) {
    ::kill(-p->pid, SIGKILL);
    ::kill(p->pid, SIGKILL);
    int st;
    while (::waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
    }
    p->pid = -1;
  }
  Reap(p);
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) {
    int code = WEXITSTATUS(status);
    // A launcher (bwrap, apptainer) reports its program's death by signal N as 128+N.
    if (code > 128 && code <= 128 + 64) {
      int sig = code - 128;
      return "exit code " + std::to_string(code) + ": killed by signal " + std::to_string(sig) +
             (sig == 9 ? " (SIGKILL)" : sig == SIGXCPU ? " (SIGXCPU: CPU limit)" : sig == SIGXFSZ ? " (SIGXFSZ: file size limit)" : "");
    }
    return "exit code " + std::to_string(code);
  }
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = sig == SIGKILL ? " (SIGKILL)" : sig == SIGXCPU ? " (SIGXCPU: CPU limit)"
                       : sig == SIGSEGV ? " (SIGSEGV)" : sig == SIGABRT ? " (SIGABRT)" : sig == SIGXFSZ ? " (SIGXFSZ: file size limit)" : "";
    return "killed by signal " + std::to_string(sig) + name;
  }
  return "status " + std::to_string(status);
}

std::string StderrTail(const std::string& workdir, size_t max_bytes) {
  auto text = ReadFile(workdir + "/stderr.log");
  if (!text.ok()) return "";
  std::string s = *text;
  if (s.size() > max_bytes) s = s.substr(s.size() - max_bytes);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace matrix::sandbox
