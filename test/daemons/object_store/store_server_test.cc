// StoreServer component tests: the server in-process, driven by StoreClient
// (and a raw DEALER for malformed input) on one thread. Time is a FakeClock,
// so retries and TTL expiry happen only when a test advances it.
#include "daemons/object_store/store_server.h"

#include <unistd.h>

#include <chrono>
#include <map>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/hash.h"
#include "common/base/json.h"
#include "common/store/store_client.h"
#include "common/transport/job_keys.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "test/support/test_util.h"

namespace matrix::store {
namespace {

using Refs = std::vector<wire::ObjectRef>;

class StoreServerTest : public ::testing::Test {
 protected:
  StoreConfig Config() {
    StoreConfig c;
    c.bind = "tcp://127.0.0.1:*";
    c.node = "n1";
    c.spill_dir = dir_.File("spill");
    c.default_ttl_ms = 60'000;
    return c;
  }
  void StartServer(StoreConfig c) {
    auto s = StoreServer::Create(std::move(c), &ctx_, &clock_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s).value();
  }
  std::unique_ptr<StoreClient> NewClient(const std::string& endpoint, StoreClient::Options opts = {}) {
    auto c = StoreClient::Create(ctx_, endpoint, "n1", &clock_, opts);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  // Runs the server (when started) and the clients' loop until `done` holds
  // or 20 s of wall time pass.
  bool Pump(const std::vector<StoreClient*>& clients, const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      for (auto* c : clients) c->Tick();
      if (server_) server_->RunOnce(1);
      else usleep(1000);
      for (auto* c : clients) c->OnReadable();
      if (done()) return true;
    }
    return done();
  }
  // Puts every blob through `client`; returns the refs in order.
  Refs PutAll(StoreClient* client, const std::vector<std::string>& blobs) {
    Refs refs(blobs.size());
    size_t completed = 0, failed = 0;
    for (size_t i = 0; i < blobs.size(); ++i) {
      client->Put(blobs[i], [&, i](StatusOr<wire::ObjectRef> ref) {
        ++completed;
        if (ref.ok()) refs[i] = *ref;
        else ++failed;
      });
    }
    EXPECT_TRUE(Pump({client}, [&] { return completed == blobs.size(); }));
    EXPECT_EQ(failed, 0u);
    return refs;
  }
  StatusOr<std::vector<std::string>> GetAll(StoreClient* client, Refs refs) {
    std::optional<StatusOr<std::vector<std::string>>> result;
    client->Get(std::move(refs), [&](StatusOr<std::vector<std::string>> r) { result = std::move(r); });
    if (!Pump({client}, [&] { return result.has_value(); })) return DeadlineExceeded("no answer");
    return *result;
  }
  static std::vector<std::string> Blobs(size_t n, size_t min_size, size_t max_size, uint64_t seed = 1) {
    std::mt19937_64 rng(seed);
    std::vector<std::string> out;
    for (size_t i = 0; i < n; ++i) {
      std::string s(min_size + rng() % (max_size - min_size + 1), '\0');
      for (auto& ch : s) ch = static_cast<char>('a' + rng() % 26);
      out.push_back(std::move(s));
    }
    return out;
  }

  testing::TempDir dir_;
  FakeClock clock_;
  transport::Context ctx_;
  std::unique_ptr<StoreServer> server_;
};

// Two nodes' stores with the job's keys: a client of node n1 reads and frees
// objects owned by n2 at n2's store, in one Get with its own objects.
TEST_F(StoreServerTest, ObjectsOfAnotherNodeAreFetchedFromItsStoreWithTheJobKeys) {
  ASSERT_TRUE(transport::CreateJobKeys(dir_.path()).ok());
  auto keys = transport::LoadJobKeys(dir_.path()).value();
  StoreConfig a = Config();
  a.keys = keys;
  StartServer(a);
  StoreConfig b = Config();
  b.node = "n2";
  b.spill_dir = dir_.File("spill2");
  b.keys = keys;
  auto other = StoreServer::Create(b, &ctx_, &clock_).value();
  std::thread other_loop([&] { ASSERT_TRUE(other->Run().ok()); });
  StoreClient::Options opts;
  opts.socket_options = transport::CurveClientOptions(keys);
  auto writer2 = StoreClient::Create(ctx_, other->endpoint(), "n2", &clock_, opts).value();
  int resolved = 0;
  opts.resolve_node = [&](const std::string& node) {
    ++resolved;
    return node == "n2" ? other->endpoint() : std::string();
  };
  auto reader = StoreClient::Create(ctx_, server_->endpoint(), "n1", &clock_, opts).value();
  Refs theirs = PutAll(writer2.get(), Blobs(3, 600, 900, 7));
  Refs ours = PutAll(reader.get(), Blobs(2, 600, 900, 8));
  Refs mixed{theirs[0], ours[0], theirs[1], ours[1], theirs[2]};
  auto got = GetAll(reader.get(), mixed);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->size(), 5u);
  for (size_t i = 0; i < mixed.size(); ++i) {
    EXPECT_EQ((*got)[i].size(), mixed[i].size);
    EXPECT_EQ(Hash64((*got)[i]), mixed[i].checksum);
  }
  EXPECT_EQ(reader->stats().remote_refs, 3);
  EXPECT_EQ(reader->stats().remote_fetches, 3);
  EXPECT_EQ(reader->sockets().size(), 2u);
  EXPECT_EQ(resolved, 1);
  // A node nobody knows: kUnavailable naming it, nothing else fails.
  wire::ObjectRef stray = theirs[0];
  stray.node = "n9";
  auto unknown = GetAll(reader.get(), {stray});
  EXPECT_EQ(unknown.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(unknown.status().message().find("n9"), std::string::npos);
  // Frees go to the owner: a fresh reader of n2 no longer finds them.
  reader->Free(theirs);
  reader->Tick();
  auto check = StoreClient::Create(ctx_, other->endpoint(), "n2", &clock_, [&] {
                 StoreClient::Options o;
                 o.socket_options = transport::CurveClientOptions(keys);
                 o.request_timeout_ms = 200;
                 o.max_retries = 0;
                 return o;
               }())
                   .value();
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        auto r = GetAll(check.get(), {theirs[0]});
        return !r.ok() && r.status().code() == StatusCode::kNotFound;
      },
      5000));
  other->Stop();
  other_loop.join();
}

TEST_F(StoreServerTest, PutGetFreeBatchesOfAThousandObjects) {
  StartServer(Config());
  auto writer = NewClient(server_->endpoint());
  auto blobs = Blobs(1000, 100, 2000);
  Refs refs = PutAll(writer.get(), blobs);
  for (size_t i = 0; i < refs.size(); ++i) {
    EXPECT_EQ(refs[i].node, "n1");
    EXPECT_EQ(refs[i].size, blobs[i].size());
    EXPECT_EQ(refs[i].checksum, Hash64(blobs[i]));
  }
  // One loop iteration's puts travel as ceil(1000 / 256) messages.
  EXPECT_EQ(server_->stats().messages, 4);
  EXPECT_EQ(server_->stats().table.objects, 1000);

  // A reader without the cache fetches everything from the store.
  auto reader = NewClient(server_->endpoint());
  auto got = GetAll(reader.get(), refs);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, blobs);
  EXPECT_EQ(reader->stats().cache_misses, 1000);
  EXPECT_EQ(server_->stats().messages, 8);
  EXPECT_EQ(server_->stats().table.gets, 1000);

  // Again: served from the reader's cache, no request.
  got = GetAll(reader.get(), refs);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, blobs);
  EXPECT_EQ(reader->stats().cache_hits, 1000);
  EXPECT_EQ(server_->stats().messages, 8);

  // The writer cached what it put.
  got = GetAll(writer.get(), {refs[3], refs[999]});
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(writer->stats().cache_hits, 2);

  reader->Free(refs);
  ASSERT_TRUE(Pump({reader.get()}, [&] { return server_->stats().table.objects == 0; }));
  EXPECT_EQ(server_->stats().table.frees, 1000);
  EXPECT_EQ(server_->stats().table.memory_bytes, 0);

  // Freed objects are gone for a client without a cached copy.
  auto fresh = NewClient(server_->endpoint());
  got = GetAll(fresh.get(), {refs[0]});
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find(Hex64(refs[0].id)), std::string::npos);
}

TEST_F(StoreServerTest, SpillsBeyondTheBudgetAndServesFromDisk) {
  StoreConfig c = Config();
  c.memory_budget_bytes = 64 << 10;
  StartServer(c);
  auto client = NewClient(server_->endpoint());
  auto blobs = Blobs(200, 1000, 3000, 7);
  Refs refs = PutAll(client.get(), blobs);
  auto s = server_->stats().table;
  EXPECT_LE(s.memory_bytes, 64 << 10);
  EXPECT_GT(s.disk_bytes, 0);
  EXPECT_GT(s.spills, 0);

  StoreClient::Options no_cache;
  no_cache.cache_bytes = 0;
  auto reader = NewClient(server_->endpoint(), no_cache);
  auto got = GetAll(reader.get(), refs);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, blobs);
  EXPECT_LE(server_->stats().table.memory_bytes, 64 << 10);
}

TEST_F(StoreServerTest, StatsReplyCarriesTheCounters) {
  StartServer(Config());
  auto client = NewClient(server_->endpoint());
  Refs refs = PutAll(client.get(), Blobs(3, 10, 20));
  std::optional<StatusOr<std::string>> reply;
  client->FetchStoreStats([&](StatusOr<std::string> r) { reply = std::move(r); });
  ASSERT_TRUE(Pump({client.get()}, [&] { return reply.has_value(); }));
  ASSERT_TRUE(reply->ok()) << reply->status().ToString();
  auto json = ParseJson(**reply, "stats reply");
  ASSERT_TRUE(json.ok());
  EXPECT_EQ((*json)["node"], "n1");
  EXPECT_EQ((*json)["objects"], 3);
  EXPECT_EQ((*json)["puts"], 3);
  for (const char* key : {"memory_bytes", "disk_bytes", "gets", "frees", "spills", "expirations",
                          "checksum_failures", "malformed_messages"})
    EXPECT_TRUE(json->contains(key)) << key;
}

TEST_F(StoreServerTest, MalformedMessagesAreDroppedAndServingContinues) {
  StartServer(Config());
  auto raw = transport::Socket::Connect(ctx_, transport::Socket::Kind::kDealer, server_->endpoint());
  ASSERT_TRUE(raw.ok());
  // Not a FlatBuffer at all.
  ASSERT_TRUE((*raw)->Send({"definitely not an envelope"}).ok());
  // A valid Put envelope announcing two objects with one payload frame.
  wire::PutMsg put{1, {{1, 3, Hash64("abc"), 0, true, ""}, {2, 3, Hash64("def"), 0, true, ""}}};
  ASSERT_TRUE((*raw)->Send({wire::EncodeControl({"raw", put}), "abc"}).ok());
  // A Get with a stray payload frame.
  ASSERT_TRUE((*raw)->Send({wire::EncodeControl({"raw", wire::GetMsg{2, {1}}}), "junk"}).ok());
  // A message type the store does not serve.
  ASSERT_TRUE((*raw)->Send({wire::EncodeControl({"raw", wire::HeartbeatMsg{}})}).ok());
  ASSERT_TRUE(Pump({}, [&] { return server_->stats().malformed_messages == 4; }));
  EXPECT_EQ(server_->stats().table.objects, 0);
  transport::Frames none;
  EXPECT_FALSE((*raw)->TryRecv(&none));  // no replies to malformed input

  auto client = NewClient(server_->endpoint());
  Refs refs = PutAll(client.get(), {"still serving"});
  auto fresh = NewClient(server_->endpoint());
  auto got = GetAll(fresh.get(), refs);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->at(0), "still serving");
}

TEST_F(StoreServerTest, PutWithWrongChecksumFailsThatItemOnly) {
  StartServer(Config());
  auto raw = transport::Socket::Connect(ctx_, transport::Socket::Kind::kDealer, server_->endpoint());
  ASSERT_TRUE(raw.ok());
  wire::PutMsg put{9, {{1, 3, Hash64("abc"), 0, true, ""},
                       {2, 3, Hash64("def") ^ 1, 0, true, ""},
                       {3, 5, Hash64("ghi"), 0, true, ""}}};
  ASSERT_TRUE((*raw)->Send({wire::EncodeControl({"raw", put}), "abc", "def", "ghi"}).ok());
  transport::Frames reply;
  ASSERT_TRUE(Pump({}, [&] { return (*raw)->TryRecv(&reply); }));
  ASSERT_EQ(reply.size(), 1u);
  auto control = wire::DecodeControl(reply[0]);
  ASSERT_TRUE(control.ok());
  auto* put_reply = std::get_if<wire::PutReplyMsg>(&control->body);
  ASSERT_NE(put_reply, nullptr);
  EXPECT_EQ(put_reply->request_id, 9u);
  ASSERT_EQ(put_reply->items.size(), 3u);
  EXPECT_TRUE(put_reply->items[0].ok);
  EXPECT_FALSE(put_reply->items[1].ok);
  EXPECT_EQ(put_reply->items[1].error.rfind("DATA_LOSS: ", 0), 0u) << put_reply->items[1].error;
  EXPECT_FALSE(put_reply->items[2].ok);  // size field says 5, payload has 3
  EXPECT_EQ(server_->stats().table.objects, 1);
}

TEST_F(StoreServerTest, ClientRetriesUntilTheServerStartsLate) {
  StoreConfig c = Config();
  c.bind = "ipc://" + dir_.File("store.sock");
  auto client = NewClient(c.bind);
  std::optional<StatusOr<wire::ObjectRef>> ref;
  client->Put("written before the store was up", [&](StatusOr<wire::ObjectRef> r) { ref = std::move(r); });
  client->Tick();
  EXPECT_EQ(client->in_flight(), 1u);
  clock_.AdvanceMillis(5001);
  client->Tick();
  EXPECT_EQ(client->stats().retries, 1);
  EXPECT_FALSE(ref.has_value());

  StartServer(c);
  ASSERT_TRUE(Pump({client.get()}, [&] { return ref.has_value(); }));
  ASSERT_TRUE(ref->ok()) << ref->status().ToString();
  auto fresh = NewClient(server_->endpoint());
  auto got = GetAll(fresh.get(), {**ref});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->at(0), "written before the store was up");
  EXPECT_EQ(server_->stats().table.objects, 1);  // both copies of the request, one object
}

TEST_F(StoreServerTest, ClientGivesUpWithUnavailableNamingTheEndpoint) {
  const std::string endpoint = "ipc://" + dir_.File("nobody.sock");
  auto client = NewClient(endpoint);
  std::optional<StatusOr<wire::ObjectRef>> ref;
  client->Put("x", [&](StatusOr<wire::ObjectRef> r) { ref = std::move(r); });
  client->Tick();
  for (int i = 0; i < 4 && !ref; ++i) {
    clock_.AdvanceMillis(5000);
    client->Tick();
  }
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(ref->status().code(), StatusCode::kUnavailable);
  EXPECT_NE(ref->status().message().find(endpoint), std::string::npos) << ref->status().message();
  EXPECT_EQ(client->stats().retries, 3);
  EXPECT_EQ(client->stats().errors, 1);
  EXPECT_EQ(client->in_flight(), 0u);
}

TEST_F(StoreServerTest, ExpirySweepFreesLeakedObjects) {
  StoreConfig c = Config();
  c.default_ttl_ms = 10'000;
  StartServer(c);
  auto client = NewClient(server_->endpoint());
  Refs refs = PutAll(client.get(), Blobs(5, 10, 10));
  ASSERT_EQ(server_->stats().table.objects, 5);
  clock_.AdvanceMillis(10'001);
  server_->RunOnce(0);
  EXPECT_EQ(server_->stats().table.objects, 0);
  EXPECT_EQ(server_->stats().table.expirations, 5);
  auto fresh = NewClient(server_->endpoint());
  EXPECT_EQ(GetAll(fresh.get(), refs).status().code(), StatusCode::kNotFound);
}

TEST_F(StoreServerTest, WritesEndpointFileAndStopsOnSignalFd) {
  StoreConfig c = Config();
  c.run_dir = dir_.path();
  c.name = "store-a";
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  c.signal_fd = fds[0];
  StartServer(c);
  auto endpoint = WaitEndpointFile(dir_.path(), "store-a", 1000);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  EXPECT_EQ(*endpoint, server_->endpoint());
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  EXPECT_TRUE(server_->Run().ok());  // returns once the fd is readable
  EXPECT_TRUE(server_->stopping());
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace matrix::store
