// UTF-8 checks for bytes from outside (dataset rows, peers' messages, HTTP
// bodies): they are made valid before they reach JSON, records or logs.
#pragma once

#include <string>
#include <string_view>

namespace matrix {

// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code
// points above U+10FFFF).
bool IsValidUtf8(std::string_view s);

// `s` with every byte that is not part of a well-formed sequence replaced by
// U+FFFD. Valid input comes back unchanged.
std::string ToValidUtf8(std::string_view s);

// `s` for a log line or an error message: valid UTF-8, control characters and
// invalid bytes written as \xNN, at most `max_bytes` of input shown (then
// "...(N bytes)").
std::string Printable(std::string_view s, size_t max_bytes = 256);

}  // namespace matrix
