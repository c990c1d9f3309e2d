// Signals as events: blocks the given signals for the whole process (call
// before starting threads) and returns a signalfd that an event loop polls.
// ReadSignal() consumes one pending signal and returns its number (0: none).
#pragma once

#include <initializer_list>
#include <string>

#include "common/base/status.h"

namespace matrix {

StatusOr<int> CreateSignalFd(std::initializer_list<int> signals);
int ReadSignal(int fd);

// The stop signals of a daemon as a signalfd. `stop_signal` "" (default):
// SIGTERM and SIGINT. "usr1": SIGUSR1 only, and SIGTERM/SIGINT are ignored;
// for daemons under `matrix node`, which SLURM's step-wide SIGTERM must not
// stop before their supervisor drains them in order. Other values are
// kInvalidArgument.
StatusOr<int> CreateStopSignalFd(const std::string& stop_signal);

}  // namespace matrix
