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

// Every segment below takes the same memory: texts of 100 characters.
std::string Text(char c) { return std::string(100, c); }
const size_t kOne = SegmentCache::Footprint(Segment(Text('a')));

TEST(SegmentCacheTest, FootprintCountsTheHeapOfEveryString) {
  EXPECT_GT(kOne, 100 + sizeof(wire::Turn));
  wire::Task spans;
  spans.spans.resize(12);
  for (auto& sp : spans.spans) sp.worker = std::string(40, 'w');
  EXPECT_GE(SegmentCache::Footprint(spans), 12 * (sizeof(wire::Span) + 41));
}

TEST(SegmentCacheTest, FindsWhatWasPutAndNothingElse) {
  SegmentCache cache(10 * kOne);
  cache.Put(1, Segment(Text('a')));
  ASSERT_NE(cache.Find(1), nullptr);
  EXPECT_EQ(cache.Find(1)->history[0].content.text, Text('a'));
  EXPECT_EQ(cache.Find(2), nullptr);
  EXPECT_EQ(cache.bytes(), kOne);
}

TEST(SegmentCacheTest, LeastRecentlyUsedGoFirstBeyondTheBudget) {
  SegmentCache cache(3 * kOne);
  cache.Put(1, Segment(Text('a')));
  cache.Put(2, Segment(Text('b')));
  cache.Put(3, Segment(Text('c')));
  ASSERT_NE(cache.Find(1), nullptr);  // 2 is now the least recently used
  cache.Put(4, Segment(Text('d')));
  EXPECT_EQ(cache.Find(2), nullptr);
  EXPECT_NE(cache.Find(1), nullptr);
  EXPECT_NE(cache.Find(3), nullptr);
  EXPECT_NE(cache.Find(4), nullptr);
  EXPECT_EQ(cache.bytes(), 3 * kOne);
  EXPECT_EQ(cache.size(), 3u);
}

TEST(SegmentCacheTest, ASegmentLargerThanTheBudgetIsNotKept) {
  SegmentCache cache(2 * kOne);
  cache.Put(1, Segment(Text('a')));
  cache.Put(2, Segment(std::string(10 * kOne, 'x')));
  EXPECT_EQ(cache.Find(2), nullptr);
  EXPECT_NE(cache.Find(1), nullptr);
}

TEST(SegmentCacheTest, EraseAndPutAgainKeepTheCountRight) {
  SegmentCache cache(10 * kOne);
  cache.Put(1, Segment(Text('a')));
  cache.Put(1, Segment(Text('b')));  // replaces
  EXPECT_EQ(cache.bytes(), kOne);
  EXPECT_EQ(cache.Find(1)->history[0].content.text, Text('b'));
  cache.Erase(1);
  cache.Erase(1);  // twice is harmless
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Find(1), nullptr);
}

}  // namespace
}  // namespace matrix::worker
