// Shared test helpers: temporary directories, child processes started and
// stopped by PID, and polling with a deadline. Used by every test tier.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace matrix::testing {

// Path of a built binary (bin/<name>) or a source file.
std::string BinPath(const std::string& name);
std::string SourcePath(const std::string& rel);

// A fresh directory under $TMPDIR, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A child process; killed with SIGKILL on destruction if still running.
// stdout/stderr go to `log_path` when given.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_path = "");
  ~ChildProcess();
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Waits up to timeout_ms; returns the exit code (128+signal when killed), or
  // -1 on timeout.
  int Wait(int timeout_ms);
  bool Running();

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
};

// Polls `pred` every 10 ms until true or timeout; returns the last result.
bool WaitUntil(const std::function<bool()>& pred, int timeout_ms);

// Runs a shell command, returns exit code; output captured into *out if given.
int RunCommand(const std::string& cmd, std::string* out = nullptr);

}  // namespace matrix::testing
