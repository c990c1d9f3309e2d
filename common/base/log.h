// Minimal leveled logging to stderr: "2026-11-23T13:10:00.123Z I broker] message".
// Thread-safe (one write() per line). The component name is set once per process.
// Never pass secrets (API keys) to the logger.
#pragma once

#include <sstream>
#include <string>

namespace matrix {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogComponent(const std::string& name);
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
void LogLine(LogLevel level, const std::string& line);

namespace internal {
class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { LogLine(level_, stream_.str()); }
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal

}  // namespace matrix

// A loop that runs at most once, so `if (x) LOG_WARN << ...; else ...` parses
// as written (no dangling else).
#define MLOG(level)                                                                   \
  for (bool _mlog_on = ::matrix::LogLevel::level >= ::matrix::GetLogLevel(); _mlog_on; \
       _mlog_on = false)                                                              \
  ::matrix::internal::LogMessage(::matrix::LogLevel::level).stream()
#define LOG_DEBUG MLOG(kDebug)
#define LOG_INFO MLOG(kInfo)
#define LOG_WARN MLOG(kWarning)
#define LOG_ERROR MLOG(kError)
