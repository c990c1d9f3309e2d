// Decoding of OpenAI-compatible chat-completion responses and of server error
// bodies, plus scrubbing of secrets from any text that leaves the client.
// Thread-safety: pure functions, callable from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/base/json.h"
#include "common/base/status.h"

namespace matrix::llm {

struct ParsedCompletion {
  std::string content;        // choices[0].message.content; text parts joined; "" when null
  Json tool_calls;            // choices[0].message.tool_calls: an array, or null
  std::string finish_reason;  // "" when absent or null
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  Json raw;  // the body's choices (cut to the first), usage and prompt_token_ids, as sent
};

// Parses a 2xx response body. InvalidArgument describing the defect when the
// body is not JSON, not an object, or has no choices[0].message object. Never throws.
StatusOr<ParsedCompletion> ParseChatCompletion(const std::string& body);

// The server's own message from an error body: OpenAI's {"error": {"message"}},
// vLLM's {"message"}, FastAPI's {"detail"}; otherwise the body text itself.
// Whitespace-trimmed and cut to at most `max_len` bytes. Never throws.
std::string ErrorMessageFromBody(const std::string& body, size_t max_len);

// Cuts `text` to at most `max_len` bytes without splitting a UTF-8 sequence,
// appending "..." when something was cut.
std::string TruncateText(const std::string& text, size_t max_len);

// Replaces every occurrence of `secret` (when non-empty) and every token that
// follows "Bearer " with "[redacted]".
std::string RedactSecrets(std::string text, const std::string& secret);

}  // namespace matrix::llm
