// Chat-completion response decoding, error-message extraction and redaction.
// JSON exceptions are caught here; callers only see Status.
// Thread-safety: stateless.
#include "common/llm/chat_response.h"

#include "common/base/strings.h"

#include <cctype>

namespace matrix::llm {
namespace {

using ::matrix::Trim;

std::string ContentText(const Json& content) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    // Content given as parts: [{"type": "text", "text": "..."}, ...].
    std::string out;
    for (const Json& part : content) {
      if (part.is_object()) {
        auto it = part.find("text");
        if (it != part.end() && it->is_string()) out += it->get<std::string>();
      } else if (part.is_string()) {
        out += part.get<std::string>();
      }
    }
    return out;
  }
  return "";
}

int64_t TokenCount(const Json& usage, const char* key) {
  if (!usage.is_object()) return 0;
  auto it = usage.find(key);
  if (it == usage.end() || !it->is_number()) return 0;
  return it->get<int64_t>();
}

}  // namespace

StatusOr<ParsedCompletion> ParseChatCompletion(const std::string& body) {
  try {
    // Only what a turn keeps is parsed; ids, names and timestamps are only
    // checked to be well formed.
    Json doc = ParseJsonMembers(body, {"choices", "usage", "prompt_token_ids"});
    if (doc.is_discarded()) {
      const size_t start = body.find_first_not_of(" \t\r\n");
      return InvalidArgument(start != std::string::npos && body[start] != '{' && Json::accept(body)
                                 ? "response body is not a JSON object"
                                 : "response body is not JSON");
    }
    auto choices = doc.find("choices");
    if (choices == doc.end() || !choices->is_array() || choices->empty())
      return InvalidArgument("response has no choices");
    const Json& first = (*choices)[0];
    if (!first.is_object()) return InvalidArgument("response choice is not an object");
    auto message = first.find("message");
    if (message == first.end() || !message->is_object())
      return InvalidArgument("response choice has no message");

    ParsedCompletion out;
    auto content = message->find("content");
    if (content != message->end()) out.content = ContentText(*content);
    auto tool_calls = message->find("tool_calls");
    if (tool_calls != message->end() && tool_calls->is_array() && !tool_calls->empty())
      out.tool_calls = *tool_calls;
    auto finish = first.find("finish_reason");
    if (finish != first.end() && finish->is_string())
      out.finish_reason = finish->get<std::string>();
    auto usage = doc.find("usage");
    if (usage != doc.end()) {
      out.prompt_tokens = TokenCount(*usage, "prompt_tokens");
      out.completion_tokens = TokenCount(*usage, "completion_tokens");
    }
    Json only_first = Json::array();
    only_first.push_back(std::move((*choices)[0]));  // `first` is not read after this
    doc["choices"] = std::move(only_first);
    out.raw = std::move(doc);
    return out;
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("response body could not be decoded: ") + e.what());
  }
}

std::string ErrorMessageFromBody(const std::string& body, size_t max_len) {
  std::string message;
  try {
    Json doc = Json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (doc.is_object()) {
      auto err = doc.find("error");
      if (err != doc.end() && err->is_object()) {
        auto m = err->find("message");
        if (m != err->end() && m->is_string()) message = m->get<std::string>();
      } else if (err != doc.end() && err->is_string()) {
        message = err->get<std::string>();
      }
      if (message.empty()) {
        auto m = doc.find("message");
        if (m != doc.end() && m->is_string()) message = m->get<std::string>();
      }
      if (message.empty()) {
        auto d = doc.find("detail");
        if (d != doc.end()) message = d->is_string() ? d->get<std::string>() : DumpJson(*d);
      }
    }
  } catch (const std::exception&) {
    message.clear();
  }
  if (message.empty()) message = body;
  return TruncateText(Trim(message), max_len);
}

std::string TruncateText(const std::string& text, size_t max_len) {
  if (text.size() <= max_len) return text;
  size_t cut = max_len;
  // Step back over UTF-8 continuation bytes so the cut lands on a boundary.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

std::string RedactSecrets(std::string text, const std::string& secret) {
  static const std::string kMask = "[redacted]";
  if (!secret.empty()) {
    size_t pos = 0;
    while ((pos = text.find(secret, pos)) != std::string::npos) {
      text.replace(pos, secret.size(), kMask);
      pos += kMask.size();
    }
  }
  // Any bearer token, whoever's it is: "Bearer <token>" up to whitespace or quote.
  static const std::string kBearer = "bearer ";
  size_t pos = 0;
  while (pos + kBearer.size() <= text.size()) {
    bool match = true;
    for (size_t k = 0; k < kBearer.size(); ++k) {
      if (std::tolower(static_cast<unsigned char>(text[pos + k])) != kBearer[k]) {
        match = false;
        break;
      }
    }
    if (!match) {
      ++pos;
      continue;
    }
    size_t start = pos + kBearer.size();
    size_t end = start;
    while (end < text.size() && !std::isspace(static_cast<unsigned char>(text[end])) &&
           text[end] != '"' && text[end] != '\'' && text[end] != ',')
      ++end;
    if (end > start && text.compare(start, end - start, kMask) != 0) {
      text.replace(start, end - start, kMask);
      end = start + kMask.size();
    }
    pos = end > start ? end : start;
  }
  return text;
}

}  // namespace matrix::llm
