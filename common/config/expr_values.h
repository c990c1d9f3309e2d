// Values of the expression language: type names, integer and UTF-8 helpers,
// ordering and equality, containment, size limits and arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/json.h"
#include "common/base/status.h"
#include "common/config/expr_tree.h"

namespace matrix::config::expr_internal {

// "null", "boolean", "integer", "float", "string", "list" or "object".
const char* TypeName(const Json& v);
// Integers that fit int64; unsigned values above INT64_MAX count as floats.
bool AsInt(const Json& v, int64_t* out);
double AsDouble(const Json& v);

bool IsAscii(std::string_view s);
size_t CodePointCount(std::string_view s);
// Byte offsets of each code point start, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s);
void AppendUtf8(std::string* out, uint32_t cp);
// 's' in single quotes, cut after 60 bytes, for messages.
std::string Quote(std::string_view s);

// Numbers by value, strings bytewise. Sets *cmp to -1/0/1; false when the
// pair is not ordered (mixed or unordered types).
bool Order(const Json& a, const Json& b, int* cmp);
// == of the language: numbers by value, otherwise same type and same value.
bool ValuesEqual(const Json& a, const Json& b);
// ResourceExhausted when a built value of `n` bytes exceeds kMaxBuiltValueBytes.
Status CheckSize(size_t n);
// Scalars as text; lists and objects are rejected for string functions.
StatusOr<std::string> StringArg(const Json& v, const char* fn);
// `item in container`: substring, list element or object key.
StatusOr<bool> Contains(const Json& container, const Json& item);

// The operator as written, for messages.
const char* OpText(BinOp op);
// + - * / // % on numbers; + also concatenates strings and lists, * repeats them.
StatusOr<Json> Arith(BinOp op, const Json& l, const Json& r);

}  // namespace matrix::config::expr_internal
