// Unit tests for SegmentCache: lookups, the byte budget, recency, erasure.
#include "daemons/agent_worker/segment_cache.h"

#include <gtest/gtest.h>

namespace matrix::worker {
namespace {

wire::Task Segment(const std::string& text) {
  wire::Task t;
  wire::Turn turn;
  turn.content.text = text;
  t.history.push_back(turn);
  return t;
}

TEST(SegmentCacheTest, FindsWhatWasPutAndNothingElse) {
  SegmentCache cache(1000);
  cache.Put(1, Segment("one"), 100);
  ASSERT_NE(cache.Find(1), nullptr);
  EXPECT_EQ(cache.Find(1)->history[0].content.text, "one");
  EXPECT_EQ(cache.Find(2), nullptr);
  EXPECT_EQ(cache.bytes(), 100u);
}

TEST(SegmentCacheTest, LeastRecentlyUsedGoFirstBeyondTheBudget) {
  SegmentCache cache(300);
  cache.Put(1, Segment("a"), 100);
  cache.Put(2, Segment("b"), 100);
  cache.Put(3, Segment("c"), 100);
  ASSERT_NE(cache.Find(1), nullptr);  // 2 is now the least recently used
  cache.Put(4, Segment("d"), 100);
  EXPECT_EQ(cache.Find(2), nullptr);
  EXPECT_NE(cache.Find(1), nullptr);
  EXPECT_NE(cache.Find(3), nullptr);
  EXPECT_NE(cache.Find(4), nullptr);
  EXPECT_EQ(cache.bytes(), 300u);
  EXPECT_EQ(cache.size(), 3u);
}

TEST(SegmentCacheTest, ASegmentLargerThanTheBudgetIsNotKept) {
  SegmentCache cache(100);
  cache.Put(1, Segment("a"), 50);
  cache.Put(2, Segment("huge"), 101);
  EXPECT_EQ(cache.Find(2), nullptr);
  EXPECT_NE(cache.Find(1), nullptr);
}

TEST(SegmentCacheTest, EraseAndPutAgainKeepTheCountRight) {
  SegmentCache cache(1000);
  cache.Put(1, Segment("a"), 100);
  cache.Put(1, Segment("b"), 200);  // replaces
  EXPECT_EQ(cache.bytes(), 200u);
  EXPECT_EQ(cache.Find(1)->history[0].content.text, "b");
  cache.Erase(1);
  cache.Erase(1);  // twice is harmless
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Find(1), nullptr);
}

}  // namespace
}  // namespace matrix::worker
