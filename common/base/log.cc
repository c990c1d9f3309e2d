#include "common/base/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <mutex>

#include "common/base/utf8.h"

namespace matrix {
namespace {
std::mutex g_mu;
std::string g_component = "matrix";
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace

void SetLogComponent(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_component = name;
}
void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }

void LogLine(LogLevel level, const std::string& line) {
  static const char kLetters[] = {'D', 'I', 'W', 'E'};
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[64];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  std::string component;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    component = g_component;
  }
  char prefix[128];
  snprintf(prefix, sizeof(prefix), "%s.%03dZ %c %s] ", stamp, millis,
           kLetters[static_cast<int>(level)], component.c_str());
  // One line of valid UTF-8 whatever the message holds (peer bytes, row text).
  bool clean = IsValidUtf8(line);
  for (size_t i = 0; clean && i < line.size(); ++i) {
    const auto c = static_cast<unsigned char>(line[i]);
    clean = c >= 0x20 || c == '\t';
  }
  std::string out = prefix + (clean ? line : Printable(line, line.size())) + "\n";
  ssize_t ignored = ::write(2, out.data(), out.size());
  (void)ignored;
}

}  // namespace matrix
