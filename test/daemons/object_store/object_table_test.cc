// ObjectTable unit tests: idempotent put/free, memory budget with LRU spill
// and read-back, checksum verification of spilled data, spill failures, TTL
// expiry. FakeClock time; spill files in a TempDir.
#include "daemons/object_store/object_table.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "test/support/test_util.h"

namespace matrix::store {
namespace {

class ObjectTableTest : public ::testing::Test {
 protected:
  std::unique_ptr<ObjectTable> Make(int64_t budget, bool spill = true) {
    config_.memory_budget_bytes = budget;
    config_.spill_dir = spill ? dir_.File("spill") : "";
    config_.default_ttl_ms = 1000;
    config_.max_object_bytes = 1 << 20;
    auto table = ObjectTable::Create(config_, &clock_);
    EXPECT_TRUE(table.ok()) << table.status().ToString();
    return table.ok() ? std::move(table).value() : nullptr;
  }
  static std::string Blob(char c, size_t n) { return std::string(n, c); }
  Status PutBlob(ObjectTable& t, uint64_t id, const std::string& data, int64_t ttl_ms = 0) {
    return t.Put(id, data, Hash64(data), ttl_ms);
  }

  testing::TempDir dir_;
  FakeClock clock_;
  StoreConfig config_;
};

TEST_F(ObjectTableTest, PutGetAndIdempotentPut) {
  auto t = Make(1 << 20);
  std::string data = "hello object";
  ASSERT_TRUE(PutBlob(*t, 7, data).ok());
  ASSERT_TRUE(PutBlob(*t, 7, data).ok());  // same id, same checksum: a retried request
  auto got = t->Get(7);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, data);
  auto s = t->stats();
  EXPECT_EQ(s.objects, 1);
  EXPECT_EQ(s.memory_bytes, static_cast<int64_t>(data.size()));
  EXPECT_EQ(s.puts, 2);
  EXPECT_EQ(s.gets, 1);

  Status conflict = PutBlob(*t, 7, "other bytes");
  EXPECT_EQ(conflict.code(), StatusCode::kAlreadyExists);
  EXPECT_NE(conflict.message().find(Hex64(7)), std::string::npos);
  EXPECT_EQ(*t->Get(7), data);
}

TEST_F(ObjectTableTest, RejectsBadChecksumAndOversizedObjects) {
  auto t = Make(1 << 20);
  EXPECT_EQ(t->Put(1, "payload", Hash64("payload") + 1).code(), StatusCode::kDataLoss);
  EXPECT_EQ(PutBlob(*t, 2, Blob('x', (1 << 20) + 1)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t->Get(1).status().code(), StatusCode::kNotFound);
  auto s = t->stats();
  EXPECT_EQ(s.objects, 0);
  EXPECT_EQ(s.put_errors, 2);
  EXPECT_EQ(s.get_misses, 1);
}

TEST_F(ObjectTableTest, FreeIsIdempotent) {
  auto t = Make(1 << 20);
  ASSERT_TRUE(PutBlob(*t, 1, "a").ok());
  t->Free(1);
  t->Free(1);
  t->Free(99);
  EXPECT_EQ(t->Get(1).status().code(), StatusCode::kNotFound);
  auto s = t->stats();
  EXPECT_EQ(s.objects, 0);
  EXPECT_EQ(s.memory_bytes, 0);
  EXPECT_EQ(s.frees, 1);
  // A freed id can be stored again.
  ASSERT_TRUE(PutBlob(*t, 1, "b").ok());
  EXPECT_EQ(*t->Get(1), "b");
}

TEST_F(ObjectTableTest, SpillsLeastRecentlyUsedAndReadsBack) {
  auto t = Make(3000);
  ASSERT_TRUE(PutBlob(*t, 1, Blob('a', 1000)).ok());
  ASSERT_TRUE(PutBlob(*t, 2, Blob('b', 1000)).ok());
  ASSERT_TRUE(PutBlob(*t, 3, Blob('c', 1000)).ok());
  ASSERT_TRUE(t->Get(1).ok());  // 2 is now the least recently used
  ASSERT_TRUE(PutBlob(*t, 4, Blob('d', 1000)).ok());

  auto s = t->stats();
  EXPECT_EQ(s.objects, 4);
  EXPECT_EQ(s.memory_bytes, 3000);
  EXPECT_EQ(s.disk_bytes, 1000);
  EXPECT_EQ(s.spills, 1);
  EXPECT_TRUE(FileExists(t->SpillPath(2)));
  EXPECT_FALSE(FileExists(t->SpillPath(1)));

  // Read back from disk; no room, so it stays there.
  auto two = t->Get(2);
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  EXPECT_EQ(*two, Blob('b', 1000));
  EXPECT_TRUE(FileExists(t->SpillPath(2)));
  EXPECT_EQ(t->stats().promotions, 0);

  // With room, a read promotes it back into memory and removes the file.
  t->Free(3);
  ASSERT_TRUE(t->Get(2).ok());
  s = t->stats();
  EXPECT_EQ(s.promotions, 1);
  EXPECT_EQ(s.memory_bytes, 3000);
  EXPECT_EQ(s.disk_bytes, 0);
  EXPECT_FALSE(FileExists(t->SpillPath(2)));
}

TEST_F(ObjectTableTest, ObjectLargerThanBudgetGoesStraightToDisk) {
  auto t = Make(1000);
  ASSERT_TRUE(PutBlob(*t, 1, Blob('s', 100)).ok());
  ASSERT_TRUE(PutBlob(*t, 2, Blob('L', 5000)).ok());
  auto s = t->stats();
  EXPECT_EQ(s.memory_bytes, 100);  // the small object was not evicted for nothing
  EXPECT_EQ(s.disk_bytes, 5000);
  EXPECT_EQ(*t->Get(2), Blob('L', 5000));
}

TEST_F(ObjectTableTest, CorruptSpillFileIsDataLossNamingTheObject) {
  auto t = Make(1000);
  const uint64_t id = 0xabcdef;
  ASSERT_TRUE(PutBlob(*t, id, Blob('a', 800)).ok());
  ASSERT_TRUE(PutBlob(*t, 2, Blob('b', 800)).ok());  // spills `id`
  ASSERT_TRUE(FileExists(t->SpillPath(id)));
  {
    std::fstream f(t->SpillPath(id), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('X');
  }
  auto got = t->Get(id);
  EXPECT_EQ(got.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(got.status().message().find(Hex64(id)), std::string::npos) << got.status().message();
  auto s = t->stats();
  EXPECT_EQ(s.checksum_failures, 1);
  EXPECT_EQ(s.objects, 1);
  EXPECT_EQ(s.disk_bytes, 0);
  EXPECT_FALSE(FileExists(t->SpillPath(id)));
  // The corrupt object is gone; the writer can store it again.
  EXPECT_EQ(t->Get(id).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(PutBlob(*t, id, Blob('a', 800)).ok());
  EXPECT_EQ(*t->Get(id), Blob('a', 800));
}

TEST_F(ObjectTableTest, TruncatedOrMissingSpillFileIsDataLoss) {
  auto t = Make(1000);
  ASSERT_TRUE(PutBlob(*t, 1, Blob('a', 800)).ok());
  ASSERT_TRUE(PutBlob(*t, 2, Blob('b', 800)).ok());
  ASSERT_TRUE(PutBlob(*t, 3, Blob('c', 800)).ok());
  ASSERT_EQ(::truncate(t->SpillPath(1).c_str(), 10), 0);
  ASSERT_EQ(::unlink(t->SpillPath(2).c_str()), 0);
  EXPECT_EQ(t->Get(1).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(t->Get(2).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(t->stats().checksum_failures, 2);
}

TEST_F(ObjectTableTest, FailedSpillIsResourceExhaustedAndMemoryStaysBounded) {
  auto t = Make(2000);
  ASSERT_TRUE(PutBlob(*t, 1, Blob('a', 1000)).ok());
  ASSERT_TRUE(PutBlob(*t, 2, Blob('b', 1000)).ok());
  // The spill directory becomes a regular file: every spill write fails.
  ASSERT_EQ(::rmdir(config_.spill_dir.c_str()), 0);
  ASSERT_TRUE(WriteFileAtomic(config_.spill_dir, "not a directory").ok());

  Status st = PutBlob(*t, 3, Blob('c', 1000));
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  auto s = t->stats();
  EXPECT_EQ(s.objects, 2);
  EXPECT_EQ(s.memory_bytes, 2000);
  EXPECT_EQ(s.put_errors, 1);
  EXPECT_EQ(*t->Get(1), Blob('a', 1000));
  EXPECT_EQ(t->Get(3).status().code(), StatusCode::kNotFound);
  // Room freed: puts succeed again.
  t->Free(1);
  EXPECT_TRUE(PutBlob(*t, 3, Blob('c', 1000)).ok());
}

TEST_F(ObjectTableTest, WithoutSpillDirectoryTheBudgetIsAHardLimit) {
  auto t = Make(1500, /*spill=*/false);
  ASSERT_TRUE(PutBlob(*t, 1, Blob('a', 1000)).ok());
  EXPECT_EQ(PutBlob(*t, 2, Blob('b', 1000)).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(t->stats().memory_bytes, 1000);
}

TEST_F(ObjectTableTest, ExpiresObjectsNotTouchedForTheirTtl) {
  auto t = Make(1000);
  ASSERT_TRUE(PutBlob(*t, 1, Blob('a', 600)).ok());            // default TTL 1 s
  ASSERT_TRUE(PutBlob(*t, 2, Blob('b', 600), 5000).ok());      // own TTL 5 s; spills 1
  ASSERT_TRUE(PutBlob(*t, 3, Blob('c', 100)).ok());
  ASSERT_TRUE(FileExists(t->SpillPath(1)));

  clock_.AdvanceMillis(600);
  ASSERT_TRUE(t->Get(3).ok());  // a read keeps 3 alive
  clock_.AdvanceMillis(500);    // t = 1.1 s: 1 has expired, 3 was read at 0.6 s
  EXPECT_EQ(t->ExpireOlderThan(clock_.NowMillis()), 1);
  EXPECT_EQ(t->Get(1).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(FileExists(t->SpillPath(1)));  // spilled objects take their file with them
  EXPECT_TRUE(t->Get(3).ok());                // read again at 1.1 s

  clock_.AdvanceMillis(1000);  // t = 2.1 s
  EXPECT_EQ(t->ExpireOlderThan(clock_.NowMillis()), 1);
  EXPECT_TRUE(t->Get(2).ok());
  clock_.AdvanceMillis(5000);
  EXPECT_EQ(t->ExpireOlderThan(clock_.NowMillis()), 1);
  auto s = t->stats();
  EXPECT_EQ(s.objects, 0);
  EXPECT_EQ(s.expirations, 3);
  EXPECT_EQ(s.memory_bytes + s.disk_bytes, 0);
  EXPECT_EQ(s.frees, 0);
}

TEST_F(ObjectTableTest, RepeatedPutRefreshesTtl) {
  auto t = Make(1000);
  ASSERT_TRUE(PutBlob(*t, 1, "x").ok());
  clock_.AdvanceMillis(900);
  ASSERT_TRUE(PutBlob(*t, 1, "x").ok());
  clock_.AdvanceMillis(900);
  EXPECT_EQ(t->ExpireOlderThan(clock_.NowMillis()), 0);
  clock_.AdvanceMillis(100);
  EXPECT_EQ(t->ExpireOlderThan(clock_.NowMillis()), 1);
}

TEST_F(ObjectTableTest, DestructionRemovesSpillFiles) {
  std::string path;
  {
    auto t = Make(100);
    ASSERT_TRUE(PutBlob(*t, 1, Blob('a', 500)).ok());
    path = t->SpillPath(1);
    ASSERT_TRUE(FileExists(path));
  }
  EXPECT_FALSE(FileExists(path));
}

}  // namespace
}  // namespace matrix::store
