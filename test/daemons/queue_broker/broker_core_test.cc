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
    core_.OnRegister(w, RegisterMsg{w, {{role, cap}}, 0, false, "", 0}, &out);
    ASSERT_EQ(out.size(), 1u);
  }
  void RegisterPeer(const std::string& link, std::vector<std::pair<std::string, uint32_t>> roles, float load) {
    std::vector<Outgoing> out;
    core_.OnRegister(link, RegisterMsg{link, std::move(roles), 0, true, "n2", load}, &out);
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

TEST_F(BrokerCoreTest, RoleNotServedHereIsForwardedToThePeerServingIt) {
  Register("w1", "teacher", 10);
  RegisterPeer("peer:b2", {{"sink:n2.worker-0", 4}}, 0.9f);
  SubmitNew("sink:n2.worker-0", 6);
  SubmitNew("teacher", 2);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  EXPECT_EQ(DeliveredTo("w1", out).size(), 2u);
  EXPECT_EQ(DeliveredTo("peer:b2", out).size(), 4u);  // its credit window
  EXPECT_EQ(core_.counters().forwarded, 4);
  EXPECT_EQ(core_.counters().stolen, 0);
  EXPECT_EQ(core_.QueueDepth("sink:n2.worker-0"), 2u);
}

TEST_F(BrokerCoreTest, SaturatedRoleIsStolenOnlyByLessLoadedPeers) {
  Register("w1", "teacher", 2);
  RegisterPeer("peer:busy", {{"teacher", 8}}, 5.0f);
  RegisterPeer("peer:idle", {{"teacher", 3}}, 0.0f);
  SubmitNew("teacher", 10);
  core_.Tick();  // load: 10 queued / capacity 2
  EXPECT_GT(core_.Load(), 1.0f);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  EXPECT_EQ(DeliveredTo("w1", out).size(), 2u);
  EXPECT_EQ(DeliveredTo("peer:idle", out).size(), 3u);
  EXPECT_TRUE(DeliveredTo("peer:busy", out).empty());
  EXPECT_EQ(core_.counters().stolen, 3);
  EXPECT_EQ(core_.QueueDepth("teacher"), 5u);
}

TEST_F(BrokerCoreTest, IdleBrokerKeepsItsWork) {
  Register("w1", "teacher", 10);
  RegisterPeer("peer:idle", {{"teacher", 8}}, 0.0f);
  SubmitNew("teacher", 4);
  core_.Tick();
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  EXPECT_EQ(DeliveredTo("w1", out).size(), 4u);
  EXPECT_TRUE(DeliveredTo("peer:idle", out).empty());
}

TEST_F(BrokerCoreTest, TaskFromPeerIsAckedUpstreamWhenHandedOnAndNeverStolenBack) {
  RegisterPeer("peer:b2", {{"teacher", 8}}, 0.0f);
  core_.OnPeerDeliver("link-b2", wire::DeliverItem{77, "teacher", 2, 5}, "task");
  core_.Tick();
  std::vector<Outgoing> out;
  core_.Dispatch(&out);  // no local worker for the role: forwarded again
  EXPECT_EQ(DeliveredTo("peer:b2", out).size(), 1u);
  auto acks = core_.TakeUpstreamAcks();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].first, "link-b2");
  EXPECT_EQ(acks[0].second, 77u);
  EXPECT_TRUE(core_.TakeUpstreamAcks().empty());

  // Served here and saturated: a task that came from a peer stays.
  Register("w1", "student", 1);
  RegisterPeer("peer:b3", {{"student", 8}}, 0.0f);
  core_.OnPeerDeliver("link-b3", wire::DeliverItem{5, "student", 1, 5}, "a");
  core_.OnPeerDeliver("link-b3", wire::DeliverItem{6, "student", 1, 5}, "b");
  core_.Tick();
  out.clear();
  core_.Dispatch(&out);
  EXPECT_EQ(DeliveredTo("w1", out).size(), 1u);
  EXPECT_TRUE(DeliveredTo("peer:b3", out).empty());
  EXPECT_EQ(core_.TakeUpstreamAcks().size(), 1u);  // only the one handed on
  EXPECT_EQ(core_.counters().from_peers, 3);
}

TEST_F(BrokerCoreTest, DeadPeerLeasesComeBack) {
  RegisterPeer("peer:b2", {{"sink:x", 4}}, 0.0f);
  SubmitNew("sink:x", 3);
  std::vector<Outgoing> out;
  core_.Dispatch(&out);
  ASSERT_EQ(core_.LeaseCount(), 3u);
  clock_.AdvanceMillis(3500);
  core_.Tick();
  EXPECT_EQ(core_.LeaseCount(), 0u);
  EXPECT_EQ(core_.QueueDepth("sink:x"), 3u);
  EXPECT_EQ(core_.counters().redelivered, 3);
}

TEST_F(BrokerCoreTest, PeerOfferListsLocallyServedRoles) {
  Register("w1", "teacher", 5);
  Register("w2", "sink:w2", 5);
  RegisterPeer("peer:b2", {{"student", 8}}, 0.0f);
  auto offer = core_.PeerOffer(16);
  ASSERT_EQ(offer.size(), 2u);
  EXPECT_EQ(offer[0].first, "sink:w2");
  EXPECT_EQ(offer[1].first, "teacher");
  EXPECT_EQ(offer[1].second, 16u);
}

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
