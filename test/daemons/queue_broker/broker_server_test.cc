// Component: BrokerServer on a real ROUTER socket over loopback, driven by
// DEALER sockets speaking the control protocol.
#include "daemons/queue_broker/broker_server.h"

#include <gtest/gtest.h>

#include <thread>

#include "common/base/files.h"
#include "common/transport/job_keys.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "test/support/test_util.h"

namespace matrix::broker {
namespace {

using transport::Frames;
using transport::Socket;

std::string TaskBytes(const std::string& id) {
  wire::Task t;
  t.task_id = id;
  t.owner = "p0";
  t.input.text = std::string(2000, 'x');
  return wire::EncodeTask(t);
}

class BrokerServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BrokerServerConfig config;
    config.bind = "tcp://127.0.0.1:*";
    config.core.worker_timeout_ms = 600;
    config.core.heartbeat_ms = 200;
    auto server = BrokerServer::Create(config, &ctx_, SystemClock::Get());
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    thread_ = std::thread([this] { ASSERT_TRUE(server_->Run().ok()); });
  }
  void TearDown() override {
    server_->Stop();
    thread_.join();
  }
  std::unique_ptr<Socket> Dealer(const std::string& id) {
    transport::SocketOptions o;
    o.identity = id;
    auto s = Socket::Connect(ctx_, Socket::Kind::kDealer, server_->endpoint(), o);
    return std::move(s).value();
  }
  void SendControl(Socket* s, wire::ControlBody body, std::vector<std::string> payloads = {}) {
    Frames f{wire::EncodeControl(wire::Control{"test", std::move(body)})};
    if (!payloads.empty()) f.push_back(wire::PackPayloads(payloads));
    ASSERT_TRUE(s->Send(f).ok());
  }
  // Receives until a message of type T arrives (skipping heartbeats).
  template <typename T>
  bool RecvBody(Socket* s, T* body, Frames* frames, int ms = 3000) {
    return matrix::testing::WaitUntil(
        [&] {
          while (s->TryRecv(frames)) {
            auto c = wire::DecodeControl((*frames)[0]);
            if (c.ok() && std::holds_alternative<T>(c->body)) {
              *body = std::get<T>(c->body);
              return true;
            }
          }
          return false;
        },
        ms);
  }

  transport::Context ctx_;
  std::unique_ptr<BrokerServer> server_;
  std::thread thread_;
};

TEST_F(BrokerServerTest, DeliversWithinCreditAndRedeliversAfterWorkerDies) {
  auto source = Dealer("source");
  auto w1 = Dealer("w1");
  SendControl(w1.get(), wire::RegisterMsg{"w1", {{"teacher", 2}}, 0, false, "", 0});
  wire::RegisterAckMsg ack;
  Frames frames;
  ASSERT_TRUE(RecvBody(w1.get(), &ack, &frames));
  wire::SubmitMsg submit;
  std::vector<std::string> payloads;
  for (int i = 0; i < 5; ++i) {
    submit.items.push_back({0, "teacher", "t" + std::to_string(i), false, true});
    payloads.push_back(TaskBytes("t" + std::to_string(i)));
  }
  SendControl(source.get(), submit, payloads);
  wire::DeliverMsg deliver;
  ASSERT_TRUE(RecvBody(w1.get(), &deliver, &frames));
  ASSERT_EQ(deliver.items.size(), 2u);
  ASSERT_EQ(frames.size(), 2u);  // envelope + one frame packing both tasks
  auto delivered = wire::UnpackPayloads(frames, 1, 2);
  ASSERT_TRUE(delivered.ok()) << delivered.status().ToString();
  EXPECT_TRUE(wire::VerifyTask((*delivered)[0]).ok());
  // w1 goes silent; w2 registers and gets the two leases back, redelivered.
  auto w2 = Dealer("w2");
  SendControl(w2.get(), wire::RegisterMsg{"w2", {{"teacher", 10}}, 0, false, "", 0});
  size_t got = 0, redelivered = 0;
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] {
        SendControl(w2.get(), wire::HeartbeatMsg{});
        wire::DeliverMsg d;
        Frames f;
        if (RecvBody(w2.get(), &d, &f, 100)) {
          got += d.items.size();
          for (auto& i : d.items) redelivered += i.deliveries > 1;
        }
        return got == 5;
      },
      5000));
  EXPECT_EQ(redelivered, 2u);
}

TEST_F(BrokerServerTest, DropsMalformedMessagesAndKeepsServing) {
  auto bad = Dealer("bad");
  ASSERT_TRUE(bad->Send({"not a flatbuffer at all"}).ok());
  wire::SubmitMsg submit{{{0, "teacher", "t1", false, true}}};
  SendControl(bad.get(), submit, {"corrupt task payload bytes"});
  auto client = Dealer("client");
  Json stats;
  // Messages from different peers are not ordered: poll the stats.
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] {
        SendControl(client.get(), wire::StatsRequestMsg{});
        wire::StatsReplyMsg reply;
        Frames frames;
        if (!RecvBody(client.get(), &reply, &frames, 200)) return false;
        stats = Json::parse(reply.json);
        return stats["counters"]["invalid"] == 2;
      },
      3000))
      << stats.dump();
  EXPECT_EQ(stats["counters"]["submitted"], 0);
}

// Two nodes' brokers with the job's keys, linked through the run directory.
class BrokerPeersTest : public BrokerServerTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(transport::CreateJobKeys(dir_.path()).ok());
    keys_ = transport::LoadJobKeys(dir_.path()).value();
    for (const char* node : {"n1", "n2"}) {
      BrokerServerConfig config;
      config.bind = "tcp://127.0.0.1:*";
      config.core.broker_id = std::string("broker.") + node;
      config.core.heartbeat_ms = 200;
      config.core.worker_timeout_ms = 600;
      config.run_dir = dir_.path() + "/nodes/" + node;
      config.node = node;
      config.nodes_dir = dir_.path() + "/nodes";
      config.keys = keys_;
      auto server = BrokerServer::Create(config, &ctx_, SystemClock::Get());
      ASSERT_TRUE(server.ok()) << server.status().ToString();
      servers_.push_back(std::move(*server));
    }
    for (auto& s : servers_) threads_.emplace_back([&s] { ASSERT_TRUE(s->Run().ok()); });
  }
  void TearDown() override {
    for (auto& s : servers_) s->Stop();
    for (auto& t : threads_) t.join();
  }
  std::unique_ptr<Socket> Member(int node, const std::string& id) {
    transport::SocketOptions o;
    o.identity = id;
    return Socket::Connect(ctx_, Socket::Kind::kDealer, servers_[node]->endpoint(),
                           transport::CurveClientOptions(keys_, o))
        .value();
  }
  Json Stats(int node) {
    auto client = Member(node, "stats");
    SendControl(client.get(), wire::StatsRequestMsg{});
    wire::StatsReplyMsg reply;
    Frames frames;
    return RecvBody(client.get(), &reply, &frames, 2000) ? Json::parse(reply.json) : Json();
  }

  matrix::testing::TempDir dir_;
  transport::CurveKeyPair keys_;
  std::vector<std::unique_ptr<BrokerServer>> servers_;
  std::vector<std::thread> threads_;
};

TEST_F(BrokerPeersTest, ForwardsARoleServedOnlyByThePeerAndAcksWhenHandedOn) {
  // The sink of partition owner "n2.w" is served on node 2 only.
  auto owner = Member(1, "n2.w");
  SendControl(owner.get(), wire::RegisterMsg{"n2.w", {{"sink:n2.w", 16}}, 0, false, "", 0});
  wire::RegisterAckMsg ack;
  Frames frames;
  ASSERT_TRUE(RecvBody(owner.get(), &ack, &frames));
  // Node 1 learns that through its link once node 2 re-registers its offer.
  ASSERT_TRUE(matrix::testing::WaitUntil([&] { return Stats(0)["peers"].size() == 1 && Stats(1)["peers"].size() == 1; }, 5000));
  auto source = Member(0, "n1.w");
  wire::SubmitMsg submit;
  std::vector<std::string> payloads;
  for (int i = 0; i < 3; ++i) {
    submit.items.push_back({0, "sink:n2.w", "t" + std::to_string(i), false, true});
    payloads.push_back(TaskBytes("t" + std::to_string(i)));
  }
  SendControl(source.get(), submit, payloads);
  size_t got = 0;
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] {
        SendControl(owner.get(), wire::HeartbeatMsg{});
        wire::DeliverMsg d;
        Frames f;
        if (RecvBody(owner.get(), &d, &f, 100)) {
          got += d.items.size();
          auto payloads = wire::UnpackPayloads(f, 1, d.items.size());
          EXPECT_TRUE(payloads.ok());
          if (payloads.ok()) {
            for (const auto& p : *payloads) EXPECT_TRUE(wire::VerifyTask(p).ok());
          }
        }
        return got == 3;
      },
      5000));
  Json s1, s2;
  ASSERT_TRUE(matrix::testing::WaitUntil(
      [&] {
        s1 = Stats(0);
        s2 = Stats(1);
        return s1["leases"] == 0;  // node 2 acked each lease when it handed the task on
      },
      3000))
      << s1.dump();
  EXPECT_EQ(s1["counters"]["forwarded"], 3);
  EXPECT_EQ(s2["counters"]["from_peers"], 3);
}

TEST_F(BrokerPeersTest, RefusesClientsWithoutTheJobKeys) {
  transport::SocketOptions plain;
  plain.identity = "intruder";
  auto intruder = Socket::Connect(ctx_, Socket::Kind::kDealer, servers_[0]->endpoint(), plain).value();
  auto other = transport::GenerateCurveKeyPair().value();
  auto stranger = Socket::Connect(ctx_, Socket::Kind::kDealer, servers_[0]->endpoint(),
                                  transport::CurveClientOptions(other, plain))
                      .value();
  for (Socket* s : {intruder.get(), stranger.get()}) SendControl(s, wire::StatsRequestMsg{});
  wire::StatsReplyMsg reply;
  Frames frames;
  EXPECT_FALSE(RecvBody(intruder.get(), &reply, &frames, 500));
  EXPECT_FALSE(RecvBody(stranger.get(), &reply, &frames, 100));
  EXPECT_FALSE(Stats(0).is_null());  // members still served
}

}  // namespace
}  // namespace matrix::broker
