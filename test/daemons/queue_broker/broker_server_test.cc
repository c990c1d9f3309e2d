// Component: BrokerServer on a real ROUTER socket over loopback, driven by
// DEALER sockets speaking the control protocol.
#include "daemons/queue_broker/broker_server.h"

#include <gtest/gtest.h>

#include <thread>

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
    for (auto& p : payloads) f.push_back(std::move(p));
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
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_TRUE(wire::VerifyTask(frames[1]).ok());
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

}  // namespace
}  // namespace matrix::broker
