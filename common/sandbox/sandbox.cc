#include "common/sandbox/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
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

void SetLimit(int resource, int64_t value) {
  rlimit r{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
  ::setrlimit(resource, &r);
}

[[noreturn]] void ChildFail(int fd, const char* what) {
  // Only async-signal-safe calls after fork.
  char buf[256];
  size_t n = 0;
  auto put = [&](const char* s) {
    while (*s && n < sizeof(buf) - 1) buf[n++] = *s++;
  };
  put("sandbox: ");
  put(what);
  put(": ");
  put(strerror(errno));
  put("\n");
  if (fd >= 0) (void)!::write(fd, buf, n);
  _exit(127);
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
  const pid_t parent = ::getpid();
  const Limits lim = spec.limits;
  const Kind kind = spec.kind;

  pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], log_fd})
      if (fd >= 0) ::close(fd);
    return Unavailable(std::string("sandbox: fork: ") + strerror(errno));
  }
  if (pid == 0) {
    ::setsid();
    if (::dup2(in_pipe[0], 0) < 0 || ::dup2(out_pipe[1], 1) < 0) ChildFail(log_fd, "dup2");
    if (log_fd >= 0) ::dup2(log_fd, 2);
    else ::dup2(::open("/dev/null", O_WRONLY), 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the worker blocks signals for its signalfd
    for (int s : {SIGPIPE, SIGTERM, SIGINT, SIGCHLD}) ::signal(s, SIG_DFL);
    if (drop) {
      if (::setgroups(0, nullptr) != 0) ChildFail(2, "setgroups");
      if (::setresgid(kNobody, kNobody, kNobody) != 0) ChildFail(2, "setresgid");
      if (::setresuid(kNobody, kNobody, kNobody) != 0) ChildFail(2, "setresuid");
    }
    // After the credential change, which clears it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) _exit(127);
    if (kind == Kind::kNone) {
      if (lim.memory_mb > 0) SetLimit(RLIMIT_AS, lim.memory_mb * 1024 * 1024);
      if (lim.cpu_s > 0) SetLimit(RLIMIT_CPU, lim.cpu_s);
      if (lim.max_file_mb > 0) SetLimit(RLIMIT_FSIZE, lim.max_file_mb * 1024 * 1024);
      if (lim.max_open_files > 0) SetLimit(RLIMIT_NOFILE, lim.max_open_files);
      if (lim.max_processes > 0 && ::geteuid() != 0) SetLimit(RLIMIT_NPROC, lim.max_processes);
    }
    ::execvpe(argv[0], argv.data(), envp.data());
    ChildFail(2, "exec");
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
