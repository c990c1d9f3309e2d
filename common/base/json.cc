#include "common/base/json.h"

#include "common/base/utf8.h"

namespace matrix {

std::string DumpJson(const Json& j, int indent) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

StatusOr<Json> ParseJson(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    // The parser quotes the bytes it stopped at; they may be anything.
    return InvalidArgument(what + ": invalid JSON: " + Printable(e.what()));
  }
}

}  // namespace matrix
