// Signals as events: blocks the given signals for the whole process (call
// before starting threads) and returns a signalfd that an event loop polls.
// ReadSignal() consumes one pending signal and returns its number (0: none).
#pragma once

#include <initializer_list>

#include "common/base/status.h"

namespace matrix {

StatusOr<int> CreateSignalFd(std::initializer_list<int> signals);
int ReadSignal(int fd);

}  // namespace matrix
