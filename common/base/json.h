// The project's JSON type (nlohmann::json). Parse errors are caught where
// input enters (ParseJson) and turned into a Status naming the input.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/base/status.h"

namespace matrix {

using Json = nlohmann::json;

// `what` names the input in the error ("data/x.jsonl line 17").
StatusOr<Json> ParseJson(const std::string& text, const std::string& what);

}  // namespace matrix
