// ObjectCache unit tests: byte-bounded LRU eviction and checksum-verified hits.
#include "common/store/object_cache.h"

#include <gtest/gtest.h>

#include "common/base/hash.h"

namespace matrix::store {
namespace {

void PutBlob(ObjectCache& c, uint64_t id, const std::string& data) { c.Put(id, Hash64(data), data); }

TEST(ObjectCacheTest, HitsVerifyTheChecksum) {
  ObjectCache cache(1000);
  PutBlob(cache, 1, "abc");
  EXPECT_EQ(cache.Get(1, Hash64("abc")), "abc");
  EXPECT_EQ(cache.Get(2, Hash64("abc")), std::nullopt);
  // A reference with another checksum does not get these bytes, and the
  // entry is dropped.
  EXPECT_EQ(cache.Get(1, Hash64("abd")), std::nullopt);
  EXPECT_EQ(cache.size(), 0u);
  // Bytes that do not hash to the recorded checksum are never served.
  cache.Put(3, Hash64("good"), "evil");
  EXPECT_EQ(cache.Get(3, Hash64("good")), std::nullopt);
  EXPECT_EQ(cache.bytes(), 0);
}

TEST(ObjectCacheTest, EvictsLeastRecentlyUsedByBytes) {
  ObjectCache cache(10);
  PutBlob(cache, 1, "aaaa");
  PutBlob(cache, 2, "bbbb");
  ASSERT_TRUE(cache.Get(1, Hash64("aaaa")));  // 2 is now the oldest
  PutBlob(cache, 3, "cccc");
  EXPECT_TRUE(cache.Get(1, Hash64("aaaa")));
  EXPECT_FALSE(cache.Get(2, Hash64("bbbb")));
  EXPECT_TRUE(cache.Get(3, Hash64("cccc")));
  EXPECT_EQ(cache.bytes(), 8);
  // Larger than the whole cache: not cached, nothing evicted.
  PutBlob(cache, 4, std::string(11, 'x'));
  EXPECT_FALSE(cache.Get(4, Hash64(std::string(11, 'x'))));
  EXPECT_EQ(cache.size(), 2u);
}

TEST(ObjectCacheTest, ReplaceAndErase) {
  ObjectCache cache(100);
  PutBlob(cache, 1, "first");
  PutBlob(cache, 1, "second!");
  EXPECT_EQ(cache.bytes(), 7);
  EXPECT_EQ(cache.Get(1, Hash64("second!")), "second!");
  cache.Erase(1);
  cache.Erase(1);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.bytes(), 0);
}

TEST(ObjectCacheTest, ZeroCapacityCachesNothing) {
  ObjectCache cache(0);
  PutBlob(cache, 1, "x");
  EXPECT_FALSE(cache.Get(1, Hash64("x")));
}

}  // namespace
}  // namespace matrix::store
