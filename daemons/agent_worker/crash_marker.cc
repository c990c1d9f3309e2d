#include "daemons/agent_worker/crash_marker.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>

#include "common/base/files.h"
#include "common/base/utf8.h"

namespace matrix::worker {

StatusOr<CrashMarker> CrashMarker::Open(const std::string& dir, const std::string& worker) {
  MATRIX_RETURN_IF_ERROR(MakeDirs(dir));
  const std::string path = dir + "/" + worker + ".handling";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Unavailable("cannot open " + path + ": " + std::strerror(errno));
  if (::ftruncate(fd, kSize) != 0) {
    const int err = errno;
    ::close(fd);
    return Unavailable("cannot size " + path + ": " + std::strerror(err));
  }
  void* map = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return Unavailable("cannot map " + path + ": " + std::strerror(errno));
  CrashMarker m;
  m.page_ = static_cast<char*>(map);
  const size_t len = static_cast<unsigned char>(m.page_[0]);
  if (len > 0 && len < kSize) {
    m.inherited_ = ToValidUtf8(std::string_view(m.page_ + 1, len));
    std::ofstream out(dir + "/" + worker + ".crashes", std::ios::app);
    out << m.inherited_ << "\n";
  }
  m.Clear();
  return m;
}

CrashMarker::CrashMarker(CrashMarker&& other) noexcept
    : page_(std::exchange(other.page_, nullptr)), inherited_(std::move(other.inherited_)) {}

CrashMarker& CrashMarker::operator=(CrashMarker&& other) noexcept {
  if (this != &other) {
    if (page_) ::munmap(page_, kSize);
    page_ = std::exchange(other.page_, nullptr);
    inherited_ = std::move(other.inherited_);
  }
  return *this;
}

CrashMarker::~CrashMarker() {
  if (page_) ::munmap(page_, kSize);
}

void CrashMarker::Set(const std::string& task_id) {
  if (!page_) return;
  const size_t len = std::min(task_id.size(), kSize - 2);
  std::memcpy(page_ + 1, task_id.data(), len);
  page_[0] = static_cast<char>(len);  // the length last: a torn id is never read as whole
}

void CrashMarker::Clear() {
  if (page_) page_[0] = 0;
}

std::map<std::string, int> CrashMarker::ReadCrashes(const std::string& dir) {
  std::map<std::string, int> counts;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".crashes") continue;
    std::ifstream in(entry.path());
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) counts[line]++;
  }
  return counts;
}

}  // namespace matrix::worker
