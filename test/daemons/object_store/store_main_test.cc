// The real matrix-store binary: starts with a run directory, publishes its
// endpoint file, serves put/get to a StoreClient, exits 0 on SIGTERM and
// leaves no spill files behind.
#include <signal.h>
#include <unistd.h>

#include <optional>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "common/store/store_client.h"
#include "common/transport/transport.h"
#include "test/support/store_driver.h"
#include "test/support/test_util.h"

namespace matrix::store {
namespace {

TEST(StoreMainTest, ServesPutGetAndExitsZeroOnSigterm) {
  testing::TempDir dir;
  const std::string spill = dir.File("spill");
  testing::ChildProcess store({testing::BinPath("matrix-store"), "--bind", "ipc://" + dir.File("store.sock"),
                               "--run-dir", dir.path(), "--name", "store", "--node", "n7",
                               "--memory-budget-mb", "1", "--spill-dir", spill, "--ttl-s", "600"},
                              dir.File("store.log"));
  auto endpoint = WaitEndpointFile(dir.path(), "store", 10'000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  EXPECT_EQ(*endpoint, "ipc://" + dir.File("store.sock"));

  transport::Context ctx;
  auto client = StoreClient::Create(ctx, *endpoint, "n7", SystemClock::Get());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  // 3 MiB through a 1 MiB budget: some of it is served from spill files.
  std::vector<std::string> blobs;
  for (int i = 0; i < 12; ++i) blobs.push_back(std::string(256 << 10, static_cast<char>('a' + i)));
  std::vector<wire::ObjectRef> refs(blobs.size());
  size_t stored = 0;
  for (size_t i = 0; i < blobs.size(); ++i) {
    (*client)->Put(blobs[i], [&, i](StatusOr<wire::ObjectRef> r) {
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      refs[i] = *r;
      ++stored;
    });
  }
  ASSERT_TRUE(testing::DriveStoreClient(client->get(), [&] { return stored == blobs.size(); }));

  StoreClient::Options no_cache;
  no_cache.cache_bytes = 0;
  auto reader = StoreClient::Create(ctx, *endpoint, "n7", SystemClock::Get(), no_cache);
  ASSERT_TRUE(reader.ok());
  std::optional<StatusOr<std::vector<std::string>>> got;
  (*reader)->Get(refs, [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  ASSERT_TRUE(testing::DriveStoreClient(reader->get(), [&] { return got.has_value(); }));
  ASSERT_TRUE(got->ok()) << got->status().ToString();
  EXPECT_EQ(**got, blobs);

  std::optional<StatusOr<std::string>> stats;
  (*reader)->FetchStoreStats([&](StatusOr<std::string> s) { stats = std::move(s); });
  ASSERT_TRUE(testing::DriveStoreClient(reader->get(), [&] { return stats.has_value(); }));
  ASSERT_TRUE(stats->ok());
  EXPECT_NE((*stats)->find("\"node\":\"n7\""), std::string::npos) << **stats;
  EXPECT_EQ((*stats)->find("\"spills\":0"), std::string::npos) << **stats;

  store.Signal(SIGTERM);
  EXPECT_EQ(store.Wait(10'000), 0);
  std::string leftovers;
  testing::RunCommand("ls -A '" + spill + "'", &leftovers);
  EXPECT_EQ(leftovers, "");
}

TEST(StoreMainTest, RejectsUnknownFlags) {
  testing::TempDir dir;
  testing::ChildProcess store({testing::BinPath("matrix-store"), "--bnid", "tcp://127.0.0.1:*"},
                              dir.File("store.log"));
  EXPECT_EQ(store.Wait(10'000), 2);
}

}  // namespace
}  // namespace matrix::store
