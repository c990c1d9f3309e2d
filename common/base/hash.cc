#include "common/base/hash.h"

#include <cstdio>

namespace matrix {

uint64_t Hash64(std::string_view data, uint64_t seed) {
  // FNV-1a over 8-byte words then the tail, followed by a final avalanche, so
  // large payloads hash at word speed.
  uint64_t h = seed;
  const uint64_t prime = 0x100000001b3ULL;
  size_t i = 0;
  for (; i + 8 <= data.size(); i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, data.data() + i, 8);
    h ^= w;
    h *= prime;
    h ^= h >> 29;
  }
  for (; i < data.size(); ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= prime;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace matrix
