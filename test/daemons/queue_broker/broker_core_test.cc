#include "daemons/queue_broker/broker_core.h"

#include <gtest/gtest.h>

namespace matrix::broker {
namespace {

using wire::RegisterMsg;
using wire::SubmitItem;
using wire::SubmitMsg;

class BrokerCoreTest : public ::testing::Test {
 protected:
  BrokerCoreTest() : core_(BrokerConfig{"b", 1000, 3000, 256}, &clock_) {}

  void Register(const std::string& w, const std::string& role, uint32_t cap) {
    std::vector<Outgoing> out;
    core_.OnRegister(w, RegisterMsg{w, {{role, cap}}, 0}, &out);
    ASSERT_EQ(out.size(), 1u);
  }
  void SubmitNew(const std::string& role, int n) {
    SubmitMsg msg;
    std::vector<std::string> payloads;
    for (int i = 0; i < n; ++i) {
      msg.items.push_back(SubmitItem{0, role, "t" + std::to_string(next_++), false, true});
      payloads.push_back("payload");
    }
    core_.OnSubmit("source", msg, std::move(payloads));
  }
  std::vector<wire::DeliverItem> DeliveredTo(const std::string& w, std::vector<Outgoing>& out) {
    for (auto& o : out)
      if (o.worker == w) return std::get<wire::DeliverMsg>(o.control.body).items;
    return {};
  }

  FakeClock clock_;
  BrokerCore core_;
  int next_ = 0;
};

TEST_F(BrokerCoreTest, NeverHandsOutMoreThanCredit) {
  Register("w1", "teacher", 3);
  SubmitNew("teacher", 10);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  EXPECT_EQ(DeliveredTo("w1", out).size(), 3u);
  EXPECT_EQ(core_.QueueDepth("teacher"), 7u);
  EXPECT_EQ(core_.LeaseCount(), 3u);
  out.clear();
  core_.Dispatch(&out);
  EXPECT_TRUE(out.empty());
}

TEST_F(BrokerCoreTest, AckReturnsCreditAndEnqueuesSuccessor) {
  Register("w1", "teacher", 1);
  Register("w2", "student", 1);
  SubmitNew("teacher", 2);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  auto items = DeliveredTo("w1", out);
  ASSERT_EQ(items.size(), 1u);
  SubmitMsg handover{{SubmitItem{items[0].lease, "student", "t0", false, true}}};
  core_.OnSubmit("w1", handover, {"next"});
  out.clear();
  core_.Dispatch(&out);
  EXPECT_EQ(DeliveredTo("w1", out).size(), 1u);  // credit came back
  EXPECT_EQ(DeliveredTo("w2", out).size(), 1u);  // successor delivered
  EXPECT_EQ(core_.counters().acked, 1);
}

TEST_F(BrokerCoreTest, DeadWorkerLeasesAreRedeliveredWithCount) {
  Register("w1", "teacher", 5);
  SubmitNew("teacher", 5);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  ASSERT_EQ(core_.LeaseCount(), 5u);
  clock_.AdvanceMillis(2000);
  core_.Tick();
  EXPECT_EQ(core_.WorkerCount(), 1u);  // not yet: 3 intervals
  clock_.AdvanceMillis(1500);
  core_.Tick();
  EXPECT_EQ(core_.WorkerCount(), 0u);
  EXPECT_EQ(core_.LeaseCount(), 0u);
  EXPECT_EQ(core_.QueueDepth("teacher"), 5u);
  Register("w2", "teacher", 10);
  out.clear();
  core_.Dispatch(&out);
  auto items = DeliveredTo("w2", out);
  ASSERT_EQ(items.size(), 5u);
  for (auto& i : items) EXPECT_EQ(i.deliveries, 2u);
  // The dead worker's late ack is ignored, not double-counted.
  core_.OnSubmit("w1", SubmitMsg{{SubmitItem{1, "", "", false, false}}}, {});
  EXPECT_EQ(core_.counters().stale_acks, 1);
}

TEST_F(BrokerCoreTest, RequeueHandsLeaseBackToTheHead) {
  Register("w1", "teacher", 1);
  SubmitNew("teacher", 2);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  auto items = DeliveredTo("w1", out);
  core_.OnSubmit("w1", SubmitMsg{{SubmitItem{items[0].lease, "", "", true, false}}}, {});
  EXPECT_EQ(core_.QueueDepth("teacher"), 2u);
  EXPECT_EQ(core_.counters().requeued, 1);
}

TEST_F(BrokerCoreTest, HeartbeatsOnlyToQuietWorkers) {
  Register("w1", "teacher", 1);
  EXPECT_TRUE(core_.WorkersNeedingHeartbeat().empty());
  clock_.AdvanceMillis(1001);
  EXPECT_EQ(core_.WorkersNeedingHeartbeat().size(), 1u);
}

}  // namespace
}  // namespace matrix::broker
