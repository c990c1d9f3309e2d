// File helpers: whole-file reads, atomic replace (write temp + rename), and
// the run directory's endpoint files through which daemons find each other.
#pragma once

#include <string>

#include "common/base/status.h"

namespace matrix {

StatusOr<std::string> ReadFile(const std::string& path);
// Whether WriteFileAtomic waits for the data to reach the disk.
enum class Durability {
  kProcessCrash,  // rename only: whole after any process crash, may be lost with a power cut
  kPowerLoss,     // fsync before the rename: whole after a power cut too
};
// Writes `data` to `path` atomically (temp file in the same folder, rename)
// with the given permission bits. Files rewritten every few hundred
// milliseconds (progress, endpoints) use kProcessCrash: an fsync each costs
// milliseconds of disk time on the hot path.
Status WriteFileAtomic(const std::string& path, const std::string& data, int mode = 0644,
                       Durability durability = Durability::kPowerLoss);
Status MakeDirs(const std::string& path, int mode = 0755);
bool FileExists(const std::string& path);

// Endpoint files: `<run_dir>/endpoints/<name>` holds one line, the address a
// daemon bound (e.g. "ipc:///run/x/broker.sock" or "tcp://10.0.0.3:41234").
Status WriteEndpointFile(const std::string& run_dir, const std::string& name,
                         const std::string& endpoint);
// Waits up to timeout_ms for the file to appear; NotFound on timeout.
StatusOr<std::string> WaitEndpointFile(const std::string& run_dir, const std::string& name,
                                       int timeout_ms);

}  // namespace matrix

namespace matrix {
// Raises RLIMIT_NOFILE to the hard limit (daemons hold thousands of sockets).
void RaiseOpenFileLimit();
}  // namespace matrix
