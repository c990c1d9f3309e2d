#include "common/base/signals.h"

#include <errno.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>

namespace matrix {

StatusOr<int> CreateSignalFd(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) sigaddset(&set, s);
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return Internal("pthread_sigmask failed");
  int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) return Internal(std::string("signalfd: ") + std::strerror(errno));
  return fd;
}

StatusOr<int> CreateStopSignalFd(const std::string& stop_signal) {
  if (stop_signal.empty() || stop_signal == "term") return CreateSignalFd({SIGTERM, SIGINT});
  if (stop_signal != "usr1") return InvalidArgument("unknown stop signal '" + stop_signal + "' (term or usr1)");
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  return CreateSignalFd({SIGUSR1});
}

int ReadSignal(int fd) {
  signalfd_siginfo info;
  ssize_t n = read(fd, &info, sizeof(info));
  if (n != sizeof(info)) return 0;
  return static_cast<int>(info.ssi_signo);
}

}  // namespace matrix
