// Non-cryptographic 64-bit hashing (FNV-1a) for object checksums, pipeline
// definition hashes and stable task ids. Not for security.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace matrix {

uint64_t Hash64(std::string_view data, uint64_t seed = 0xcbf29ce484222325ULL);
// 16 lowercase hex digits.
std::string Hex64(uint64_t v);

}  // namespace matrix
