// Unit: ScrapeTargets turns endpoints/<name>.metrics files into a Prometheus
// file service discovery list, follows restarts and clears it at the end.
#include "daemons/cli/scrape_targets.h"

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/json.h"
#include "test/support/test_util.h"

namespace matrix::cli {
namespace {

Json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << path;
  return text.ok() ? Json::parse(*text) : Json();
}

TEST(ScrapeTargetsTest, ListsPublishedDaemonsWithLabels) {
  testing::TempDir dir;
  ScrapeTargets targets(dir.path(), "node-a");
  for (const char* n : {"store", "broker", "worker-0", "worker-1", "llm-sim"}) targets.Add(n);
  targets.Add("broker");  // once only
  ASSERT_TRUE(WriteEndpointFile(dir.path(), "broker.metrics", "127.0.0.1:9101").ok());
  ASSERT_TRUE(WriteEndpointFile(dir.path(), "worker-1.metrics", "127.0.0.1:9102").ok());

  auto complete = targets.Refresh();
  ASSERT_TRUE(complete.ok()) << complete.status().ToString();
  EXPECT_FALSE(*complete);
  Json list = ReadJson(targets.path());
  ASSERT_EQ(list.size(), 2u) << list.dump();
  EXPECT_EQ(list[0]["targets"], Json::array({"127.0.0.1:9101"}));
  EXPECT_EQ(list[0]["labels"], (Json{{"job", "matrix"}, {"node", "node-a"}, {"daemon", "broker"}, {"process", "broker"}}));
  EXPECT_EQ(list[1]["labels"]["daemon"], "worker");
  EXPECT_EQ(list[1]["labels"]["process"], "worker-1");
  EXPECT_EQ(targets.path(), dir.path() + "/prometheus/targets.json");

  for (const char* n : {"store", "worker-0", "llm-sim"})
    ASSERT_TRUE(WriteEndpointFile(dir.path(), std::string(n) + ".metrics", "127.0.0.1:1").ok());
  complete = targets.Refresh();
  ASSERT_TRUE(complete.ok());
  EXPECT_TRUE(*complete);
  EXPECT_EQ(ReadJson(targets.path()).size(), 5u);
  EXPECT_EQ(targets.Addresses().size(), 5u);
  EXPECT_EQ(targets.Addresses()[1], "broker=127.0.0.1:9101");
}

TEST(ScrapeTargetsTest, FollowsARestartedDaemonAndClearsAtTheEnd) {
  testing::TempDir dir;
  ScrapeTargets targets(dir.path(), "n");
  targets.Add("worker-0");
  ASSERT_TRUE(WriteEndpointFile(dir.path(), "worker-0.metrics", "127.0.0.1:9200").ok());
  ASSERT_TRUE(targets.Refresh().ok());
  EXPECT_EQ(ReadJson(targets.path())[0]["targets"][0], "127.0.0.1:9200");

  // The process died: its address goes until the new one is published.
  targets.Forget("worker-0");
  EXPECT_FALSE(FileExists(dir.path() + "/endpoints/worker-0.metrics"));
  auto complete = targets.Refresh();
  ASSERT_TRUE(complete.ok());
  EXPECT_FALSE(*complete);
  EXPECT_TRUE(ReadJson(targets.path()).empty());
  ASSERT_TRUE(WriteEndpointFile(dir.path(), "worker-0.metrics", "127.0.0.1:9300").ok());
  ASSERT_TRUE(targets.Refresh().ok());
  EXPECT_EQ(ReadJson(targets.path())[0]["targets"][0], "127.0.0.1:9300");

  ASSERT_TRUE(targets.Clear().ok());
  EXPECT_EQ(*ReadFile(targets.path()), "[]\n");
}

TEST(ScrapeTargetsTest, DaemonKindOfProcessNames) {
  EXPECT_EQ(DaemonKind("worker-12"), "worker");
  EXPECT_EQ(DaemonKind("llm-sim"), "llm-sim");
  EXPECT_EQ(DaemonKind("store"), "store");
}

}  // namespace
}  // namespace matrix::cli
