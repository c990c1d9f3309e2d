// CrashMarker: which task a worker process was handling when it died.
// While the worker handles a task (a delivery, an LLM answer), the task's id
// sits in a small memory-mapped file, <run_dir>/progress/<worker>.handling;
// it is cleared when the handler returns. A process that dies (a crash, an
// abort, kill -9) leaves the id behind; the next worker of the same name
// appends it to <worker>.crashes at start. Every worker reads all the
// .crashes files of the run directory at start: a task that was being
// handled at several deaths is the likely culprit and is charged for them,
// while the other tasks that were in flight are redelivered free.
// Cost while running: a memcpy into a mapped page per handled task; no syscall.
// Thread-safety: not thread-safe; owned by the worker's event loop.
#pragma once

#include <map>
#include <string>

#include "common/base/status.h"

namespace matrix::worker {

class CrashMarker {
 public:
  // Maps <dir>/<worker>.handling, first moving what a predecessor left in it
  // to <dir>/<worker>.crashes.
  static StatusOr<CrashMarker> Open(const std::string& dir, const std::string& worker);
  CrashMarker() = default;
  CrashMarker(CrashMarker&& other) noexcept;
  CrashMarker& operator=(CrashMarker&& other) noexcept;
  ~CrashMarker();

  void Set(const std::string& task_id);
  void Clear();

  // How many deaths each task was handled at, from every .crashes file in dir.
  static std::map<std::string, int> ReadCrashes(const std::string& dir);

  // What the predecessor was handling when it died ("" when it exited cleanly).
  const std::string& inherited() const { return inherited_; }

 private:
  static constexpr size_t kSize = 256;
  char* page_ = nullptr;
  std::string inherited_;
};

// Sets the marker for the scope of one handler.
class Handling {
 public:
  Handling(CrashMarker& m, const std::string& task_id) : m_(m) { m_.Set(task_id); }
  ~Handling() { m_.Clear(); }
  Handling(const Handling&) = delete;
  Handling& operator=(const Handling&) = delete;

 private:
  CrashMarker& m_;
};

}  // namespace matrix::worker
