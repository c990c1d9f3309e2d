// Retry policy: status classification, backoff and Retry-After parsing.
// Thread-safety: stateless; curl_getdate is reentrant.
#include "common/llm/retry_policy.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

namespace matrix::llm {

HttpOutcome ClassifyHttpStatus(int http_status) {
  if (http_status >= 200 && http_status < 300) return HttpOutcome::kSuccess;
  if (http_status == 408 || http_status == 429 || (http_status >= 500 && http_status < 600))
    return HttpOutcome::kRetryable;
  return HttpOutcome::kNonRetryable;
}

bool HonoursRetryAfter(int http_status) { return http_status == 429 || http_status == 503; }

double BackoffSeconds(int retry, double base_s, double max_s, double unit_random) {
  if (retry < 1) retry = 1;
  if (base_s <= 0 || max_s <= 0) return 0;
  // 2^60 times any sane base is far past any cap; clamping the exponent keeps
  // the arithmetic finite.
  double ceiling = std::min(max_s, base_s * std::ldexp(1.0, std::min(retry - 1, 60)));
  double u = std::clamp(unit_random, 0.0, 1.0);
  return ceiling * u;
}

std::optional<double> ParseRetryAfter(std::string_view value, double now_unix_s) {
  size_t b = 0, e = value.size();
  while (b < e && std::isspace(static_cast<unsigned char>(value[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(value[e - 1]))) --e;
  std::string text(value.substr(b, e - b));
  if (text.empty()) return std::nullopt;

  bool numeric = true;
  int dots = 0;
  for (char c : text) {
    if (c == '.') {
      ++dots;
    } else if (!std::isdigit(static_cast<unsigned char>(c))) {
      numeric = false;
      break;
    }
  }
  if (numeric) {
    if (dots > 1 || text == ".") return std::nullopt;
    double secs = std::strtod(text.c_str(), nullptr);
    if (!std::isfinite(secs)) return std::nullopt;
    return secs;
  }
  // An HTTP-date always names a weekday and a month, so it has letters and a
  // space; anything shorter is noise that curl_getdate might still accept.
  if (text.size() < 20 || text.find(' ') == std::string::npos) return std::nullopt;
  time_t when = curl_getdate(text.c_str(), nullptr);
  if (when == static_cast<time_t>(-1)) return std::nullopt;
  return std::max(0.0, static_cast<double>(when) - now_unix_s);
}

double RetryDelaySeconds(int retry, double base_s, double max_s,
                         std::optional<double> retry_after_s, double unit_random) {
  if (retry_after_s.has_value()) return std::clamp(*retry_after_s, 0.0, std::max(0.0, max_s) * 4);
  return BackoffSeconds(retry, base_s, max_s, unit_random);
}

}  // namespace matrix::llm
