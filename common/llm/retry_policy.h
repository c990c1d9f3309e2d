// Retry policy for chat-completion calls: which HTTP outcomes are retried,
// how long to wait before the next attempt (exponential backoff with full
// jitter, or the server's Retry-After), and Retry-After header parsing.
// Thread-safety: pure functions, callable from any thread.
#pragma once

#include <optional>
#include <string_view>

namespace matrix::llm {

enum class HttpOutcome {
  kSuccess,       // 2xx: the body still has to parse as a completion
  kRetryable,     // 408, 429, 5xx
  kNonRetryable,  // every other status (400, 401, 403, 404, 422, 3xx, ...)
};

HttpOutcome ClassifyHttpStatus(int http_status);

// Whether a retryable status carries a Retry-After the client honours (429, 503).
bool HonoursRetryAfter(int http_status);

// Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2^(retry-1))).
// `retry` is 1 for the first retry; `unit_random` is a uniform draw in [0, 1).
double BackoffSeconds(int retry, double base_s, double max_s, double unit_random);

// Parses a Retry-After value: delta-seconds ("120"; a fraction such as "1.5" is
// accepted too) or an HTTP-date (IMF-fixdate, RFC 850 or asctime form).
// Returns the wait in seconds counted from `now_unix_s`, never negative;
// nullopt when the value is neither form.
std::optional<double> ParseRetryAfter(std::string_view value, double now_unix_s);

// Delay before retry number `retry` (1-based). A Retry-After from the server
// takes precedence, capped at 4 * max_s; otherwise BackoffSeconds.
double RetryDelaySeconds(int retry, double base_s, double max_s,
                         std::optional<double> retry_after_s, double unit_random);

}  // namespace matrix::llm
