#include "daemons/cli/process.h"

#include <sys/prctl.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/base/files.h"
#include "common/base/log.h"
#include "common/base/signals.h"

namespace matrix::cli {

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The last non-empty line of a log file (its last 64 KB), for a child's last words.
std::string LastLogLine(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return "";
  std::string s = text->size() > 65536 ? text->substr(text->size() - 65536) : *text;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  const size_t nl = s.find_last_of('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

}  // namespace

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.find_last_of('/'));
}

Supervisor::~Supervisor() { StopAll(2000); }

Status Supervisor::Spawn(Child& child) {
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return Internal(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Children get default signal handling back (the parent blocks signals).
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);
    setpgid(0, 0);  // Ctrl-C on the terminal reaches only `matrix`, which stops children in order
    if (child.spec.die_with_parent) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);  // the parent died before prctl
    }
    int fd = open(child.spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> args;
    for (auto& a : child.spec.argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  child.pid = pid;
  child.exit_code = -1;
  child.started_ms = NowMs();
  child.restart_at_ms = -1;
  return Status::Ok();
}

Status Supervisor::Start(const ChildSpec& spec) {
  children_.push_back(Child{spec});
  return Spawn(children_.back());
}

std::vector<std::string> Supervisor::Reap(bool restart) {
  std::vector<std::string> exited;
  const int64_t now = NowMs();
  for (auto& c : children_) {
    if (c.pid <= 0) {
      if (c.restart_at_ms >= 0 && now >= c.restart_at_ms && restart && gave_up_.empty()) {
        ++restarts_;
        Status st = Spawn(c);
        if (!st.ok()) {
          LOG_ERROR << "restart of " << c.spec.name << " failed: " << st.message();
          c.restart_at_ms = now + static_cast<int64_t>(policy_.max_backoff_s * 1000);
        }
      }
      continue;
    }
    int status = 0;
    pid_t r = waitpid(c.pid, &status, WNOHANG);
    if (r != c.pid) continue;
    c.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    c.pid = -1;
    exited.push_back(c.spec.name);
    if (!restart || !c.spec.restart) continue;
    const bool fast = now - c.started_ms < static_cast<int64_t>(policy_.fast_s * 1000);
    c.fast_deaths = fast ? c.fast_deaths + 1 : 0;
    if (c.fast_deaths >= policy_.max_fast_deaths) {
      if (gave_up_.empty()) {
        const std::string last = LastLogLine(c.spec.log_path);
        gave_up_ = c.spec.name + " died " + std::to_string(c.fast_deaths) + " times in a row within " +
                   std::to_string(static_cast<int>(policy_.fast_s)) + " s of starting (last exit code " +
                   std::to_string(c.exit_code) + ")" + (last.empty() ? "" : "; its last log line: " + last) +
                   " (log: " + c.spec.log_path + ")";
      }
      continue;
    }
    double backoff = policy_.first_backoff_s;
    for (int i = 1; i < c.fast_deaths && backoff < policy_.max_backoff_s; ++i) backoff *= 2;
    if (backoff > policy_.max_backoff_s) backoff = policy_.max_backoff_s;
    c.restart_at_ms = now + static_cast<int64_t>(backoff * 1000);
    LOG_WARN << c.spec.name << " exited with code " << c.exit_code << "; restarting in " << backoff
             << " s (log: " << c.spec.log_path << ")";
  }
  return exited;
}

pid_t Supervisor::Pid(const std::string& name) const {
  for (const auto& c : children_)
    if (c.spec.name == name) return c.pid;
  return -1;
}

bool Supervisor::Running(const std::string& name) const { return Pid(name) > 0; }

void Supervisor::Stop(const std::vector<std::string>& names, int grace_ms, int interrupt_fd) {
  for (auto& c : children_)  // no restart is due for what is being stopped
    if (names.empty() || std::find(names.begin(), names.end(), c.spec.name) != names.end()) c.restart_at_ms = -1;
  auto selected = [&](const Child& c) {
    if (c.pid <= 0) return false;
    if (names.empty()) return true;
    for (const auto& n : names)
      if (n == c.spec.name) return true;
    return false;
  };
  for (auto& c : children_)
    if (selected(c)) kill(c.pid, c.spec.stop_signal);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    bool any = false;
    for (auto& c : children_) {
      if (!selected(c)) continue;
      int status = 0;
      if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        c.pid = -1;
      } else {
        any = true;
      }
    }
    if (!any) return;
    if (interrupt_fd >= 0 && ReadSignal(interrupt_fd) != 0) {
      LOG_WARN << "second signal: stopping at once";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& c : children_) {
    if (!selected(c)) continue;
    LOG_WARN << c.spec.name << " did not stop within " << grace_ms << " ms; killing it";
    kill(c.pid, SIGKILL);
    waitpid(c.pid, nullptr, 0);
    c.pid = -1;
  }
}

}  // namespace matrix::cli
