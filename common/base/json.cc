#include "common/base/json.h"

namespace matrix {

StatusOr<Json> ParseJson(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    return InvalidArgument(what + ": invalid JSON: " + e.what());
  }
}

}  // namespace matrix
