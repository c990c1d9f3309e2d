#include "common/transport/transport.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/base/files.h"
#include "common/transport/job_keys.h"
#include "test/support/test_util.h"

namespace matrix::transport {
namespace {

bool RecvWithin(Socket* s, Frames* out, int ms) {
  return matrix::testing::WaitUntil([&] { return s->TryRecv(out); }, ms);
}

TEST(TransportTest, RouterDealerOverLoopbackEphemeralPort) {
  Context ctx;
  auto server = Socket::Bind(ctx, Socket::Kind::kRouter, "tcp://127.0.0.1:*");
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  std::string endpoint = (*server)->endpoint();
  EXPECT_EQ(endpoint.find("tcp://127.0.0.1:"), 0u);
  SocketOptions opts;
  opts.identity = "worker-1";
  auto client = Socket::Connect(ctx, Socket::Kind::kDealer, endpoint, opts);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Send({"hello", "payload"}).ok());
  Frames got;
  ASSERT_TRUE(RecvWithin(server->get(), &got, 2000));
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], "worker-1");
  EXPECT_EQ(got[2], "payload");
  ASSERT_TRUE((*server)->Send({"worker-1", "reply"}).ok());
  ASSERT_TRUE(RecvWithin(client->get(), &got, 2000));
  EXPECT_EQ(got[0], "reply");
  // Unknown peers are an error, not a silent drop.
  EXPECT_FALSE((*server)->Send({"nobody", "x"}).ok());
}

TEST(TransportTest, LargeFramesHandedOverArriveIntact) {
  Context ctx;
  auto server = Socket::Bind(ctx, Socket::Kind::kRouter, "tcp://127.0.0.1:*");
  ASSERT_TRUE(server.ok());
  SocketOptions opts;
  opts.identity = "worker-1";
  auto client = Socket::Connect(ctx, Socket::Kind::kDealer, (*server)->endpoint(), opts);
  ASSERT_TRUE(client.ok());
  std::string big(300 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  Frames frames{"header", big, "tail"};
  ASSERT_TRUE((*client)->Send(std::move(frames)).ok());
  Frames got;
  ASSERT_TRUE(RecvWithin(server->get(), &got, 2000));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[1], "header");
  EXPECT_TRUE(got[2] == big) << "a large frame sent without a copy arrives byte for byte";
  EXPECT_EQ(got[3], "tail");
  // A refused large frame is released, not leaked (checked under ASan).
  EXPECT_FALSE((*server)->Send(Frames{"nobody", big}).ok());
  ASSERT_TRUE((*server)->Send(Frames{"worker-1", big}).ok());
  ASSERT_TRUE(RecvWithin(client->get(), &got, 2000));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0] == big);
}

TEST(TransportTest, CurveRefusesClientWithoutServerKey) {
  Context ctx;
  auto server_keys = GenerateCurveKeyPair();
  auto client_keys = GenerateCurveKeyPair();
  ASSERT_TRUE(server_keys.ok() && client_keys.ok());
  SocketOptions so;
  so.curve_server = true;
  so.curve_public_key = server_keys->public_key;
  so.curve_secret_key = server_keys->secret_key;
  auto server = Socket::Bind(ctx, Socket::Kind::kRouter, "tcp://127.0.0.1:*", so);
  ASSERT_TRUE(server.ok());
  SocketOptions good;
  good.curve_server_key = server_keys->public_key;
  good.curve_public_key = client_keys->public_key;
  good.curve_secret_key = client_keys->secret_key;
  auto ok_client = Socket::Connect(ctx, Socket::Kind::kDealer, (*server)->endpoint(), good);
  auto bad_client = Socket::Connect(ctx, Socket::Kind::kDealer, (*server)->endpoint());
  ASSERT_TRUE(ok_client.ok() && bad_client.ok());
  ASSERT_TRUE((*bad_client)->Send({"intruder"}).ok());
  ASSERT_TRUE((*ok_client)->Send({"member"}).ok());
  Frames got;
  ASSERT_TRUE(RecvWithin(server->get(), &got, 3000));
  EXPECT_EQ(got.back(), "member");
  EXPECT_FALSE(RecvWithin(server->get(), &got, 300));
}

TEST(TransportTest, JobKeysAdmitOnlyTheJobAndCountRefusals) {
  matrix::testing::TempDir dir;
  ASSERT_TRUE(CreateJobKeys(dir.path()).ok());
  auto keys = LoadJobKeys(dir.path());
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  // Creating again keeps the pair.
  ASSERT_TRUE(CreateJobKeys(dir.path()).ok());
  EXPECT_EQ(LoadJobKeys(dir.path())->secret_key, keys->secret_key);
  struct stat st;
  ASSERT_EQ(::stat(JobKeyPath(dir.path()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  Context ctx;
  ASSERT_TRUE(ctx.RestrictCurveClients({keys->public_key}).ok());
  auto server = Socket::Bind(ctx, Socket::Kind::kRouter, "tcp://127.0.0.1:*", CurveServerOptions(*keys));
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE((*server)->WatchHandshakeFailures().ok());
  const std::string ep = (*server)->endpoint();
  // Knows the server key but not the job's pair: refused by ZAP.
  auto other = GenerateCurveKeyPair();
  SocketOptions stranger;
  stranger.curve_server_key = keys->public_key;
  stranger.curve_public_key = other->public_key;
  stranger.curve_secret_key = other->secret_key;
  auto with_other_keys = Socket::Connect(ctx, Socket::Kind::kDealer, ep, stranger);
  auto without_curve = Socket::Connect(ctx, Socket::Kind::kDealer, ep);
  auto member = Socket::Connect(ctx, Socket::Kind::kDealer, ep, CurveClientOptions(*keys));
  ASSERT_TRUE(with_other_keys.ok() && without_curve.ok() && member.ok());
  ASSERT_TRUE((*with_other_keys)->Send({"stranger"}).ok());
  ASSERT_TRUE((*without_curve)->Send({"plain"}).ok());
  ASSERT_TRUE((*member)->Send({"member"}).ok());
  Frames got;
  ASSERT_TRUE(RecvWithin(server->get(), &got, 3000));
  EXPECT_EQ(got.back(), "member");
  EXPECT_FALSE(RecvWithin(server->get(), &got, 300));
  int64_t failures = 0;
  EXPECT_TRUE(matrix::testing::WaitUntil(
      [&] {
        failures += (*server)->TakeHandshakeFailures();
        return failures >= 2;
      },
      3000))
      << failures;
  EXPECT_GE(ctx.curve_clients_refused(), 1);
}

TEST(TransportTest, JobKeysReadableByOthersAreRefused) {
  matrix::testing::TempDir dir;
  ASSERT_TRUE(CreateJobKeys(dir.path()).ok());
  ASSERT_EQ(::chmod(JobKeyPath(dir.path()).c_str(), 0644), 0);
  auto keys = LoadJobKeys(dir.path());
  ASSERT_FALSE(keys.ok());
  EXPECT_NE(keys.status().message().find("job.key"), std::string::npos);
  EXPECT_EQ(LoadJobKeys(dir.path() + "/missing").status().code(), StatusCode::kNotFound);
}

TEST(TransportTest, WaitForInputSeesAMessage) {
  Context ctx;
  auto a = Socket::Bind(ctx, Socket::Kind::kPair, "inproc://wait-test");
  auto b = Socket::Connect(ctx, Socket::Kind::kPair, "inproc://wait-test");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE((*a)->WaitForInput(0));
  EXPECT_FALSE((*a)->HasInput());
  ASSERT_TRUE((*b)->Send({"x"}).ok());
  EXPECT_TRUE((*a)->WaitForInput(5000));
  EXPECT_TRUE((*a)->HasInput());
}

// A socket on an EventLoop: each message that arrives runs the handler, one
// that leaves messages behind runs again without a wait, and sends from the
// handler (which can take ZeroMQ's edge away) lose no wake-up.
TEST(TransportTest, ASocketWatchedOnAnEventLoopRunsItsHandlerWhileMessagesWait) {
  Context ctx;
  auto a = Socket::Bind(ctx, Socket::Kind::kPair, "inproc://loop-test");
  auto b = Socket::Connect(ctx, Socket::Kind::kPair, "inproc://loop-test");
  ASSERT_TRUE(a.ok() && b.ok());
  auto loop = EventLoop::Create(SystemClock::Get());
  ASSERT_TRUE(loop.ok());
  int received = 0;
  Frames frames;
  ASSERT_TRUE((*a)->WatchOn(**loop, [&] {
                    // One message per turn, and an answer to each.
                    if ((*a)->TryRecv(&frames)) {
                      ++received;
                      ASSERT_TRUE((*a)->Send({"ack"}).ok());
                    }
                  }).ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE((*b)->Send({std::to_string(i)}).ok());
  const int64_t deadline = SystemClock::Get()->NowNanos() + 10'000'000'000;
  while (received < 5 && SystemClock::Get()->NowNanos() < deadline) (*loop)->RunOnce(1'000'000'000);
  EXPECT_EQ(received, 5);
  int acks = 0;
  while ((*b)->WaitForInput(1000) && (*b)->TryRecv(&frames)) {
    if (++acks == 5) break;
  }
  EXPECT_EQ(acks, 5);
  // Later messages wake a loop that waits.
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_TRUE((*b)->Send({"late"}).ok());
  });
  while (received < 6 && SystemClock::Get()->NowNanos() < deadline) (*loop)->RunOnce(1'000'000'000);
  late.join();
  EXPECT_EQ(received, 6);
  (*loop)->Unwatch((*a)->fd());
}

}  // namespace
}  // namespace matrix::transport
