// The project's JSON type (nlohmann::json). Parse errors are caught where
// input enters (ParseJson) and turned into a Status naming the input; output
// goes through DumpJson, which never throws on bytes from outside.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"

namespace matrix {

using Json = nlohmann::json;

// Serializes `j`; strings that are not valid UTF-8 are written with U+FFFD
// in place of the bad bytes instead of throwing. Use this, not Json::dump.
std::string DumpJson(const Json& j, int indent = -1);

// Appends `s` as a JSON string, the way DumpJson writes one: quotes,
// backslashes and control characters escaped, bytes that are not valid UTF-8
// replaced by U+FFFD. For output written field by field, without a Json tree.
void AppendJsonString(std::string* out, std::string_view s);

// `what` names the input in the error ("data/x.jsonl line 17").
StatusOr<Json> ParseJson(const std::string& text, const std::string& what);

// The members named in `keys` of the JSON object `text`, parsed; the other
// members are only checked (balanced brackets, well-formed strings), not
// parsed, which makes reading a few fields of a large record cheap. A
// discarded Json (is_discarded()) when `text` is not such an object.
Json ParseJsonMembers(std::string_view text, const std::vector<std::string_view>& keys);

}  // namespace matrix
