// ReadApiKey: environment variable first, then an owner-only key file.
// The file is opened once and checked with fstat on that descriptor, so the
// permission check and the read see the same file.
#include "common/llm/api_key.h"

#include "common/base/strings.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace matrix::llm {
namespace {

using ::matrix::Trim;

constexpr size_t kMaxKeyFileBytes = 64 * 1024;

}  // namespace

StatusOr<std::string> ReadApiKey(const std::string& env_name, const std::string& file_path) {
  if (!env_name.empty()) {
    const char* value = std::getenv(env_name.c_str());
    if (value != nullptr) {
      std::string key = Trim(value);
      if (!key.empty()) return key;
    }
  }
  if (file_path.empty()) {
    if (env_name.empty()) return NotFound("no API key source configured");
    return NotFound("API key: environment variable " + env_name +
                    " is not set and no key file is configured");
  }

  int fd = ::open(file_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    return FailedPrecondition("API key file " + file_path + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return FailedPrecondition("API key file " + file_path + ": " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FailedPrecondition("API key file " + file_path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPrecondition("API key file " + file_path +
                              " is accessible by group or others (mode " + mode +
                              "); make it owner-only (chmod 600)");
  }
  std::string data;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return FailedPrecondition("API key file " + file_path + ": " + std::strerror(err));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > kMaxKeyFileBytes) {
      ::close(fd);
      return FailedPrecondition("API key file " + file_path + " is too large to be a key");
    }
  }
  ::close(fd);
  std::string key = Trim(data);
  if (key.empty()) return FailedPrecondition("API key file " + file_path + " is empty");
  return key;
}

}  // namespace matrix::llm
