// Scraping for tests of /metrics: fetch an exposition over real HTTP with curl and
// lint it with `promtool check metrics`.
// Thread-safety: free functions; each call runs its own child process.
#pragma once

#include <string>

namespace matrix::testing {

// GETs http://<address><path> with curl. Returns curl's exit code (0 on a
// 2xx answer); *body is replaced by the answer (or curl's error).
int HttpGet(const std::string& address, const std::string& path, std::string* body);
// The HTTP status code of GET http://<address><path>; 0 when unreachable.
int HttpStatus(const std::string& address, const std::string& path);
// Whether promtool is on PATH.
bool HavePromtool();
// Runs `promtool check metrics` on `exposition`; returns its exit code and
// puts whatever it reported into *report (empty when the text is clean).
int PromtoolCheckMetrics(const std::string& exposition, std::string* report);

}  // namespace matrix::testing
