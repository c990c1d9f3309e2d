// StoreClient against a scripted ROUTER: each test captures the requests the
// client sends and completes them by hand, so batching, caching, retries and
// checksum handling are checked step by step. FakeClock; inproc transport.
#include "common/store/store_client.h"

#include <chrono>
#include <optional>

#include <gtest/gtest.h>

#include "common/base/hash.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "test/support/test_util.h"

namespace matrix::store {
namespace {

using Refs = std::vector<wire::ObjectRef>;
using GetResult = std::optional<StatusOr<std::vector<std::string>>>;

// One request as the fake store received it.
struct Captured {
  std::string peer;
  wire::Control control;
  std::vector<std::string> payloads;
};

class StoreClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int n = 0;
    endpoint_ = "inproc://store-client-test-" + std::to_string(++n);
    auto s = transport::Socket::Bind(ctx_, transport::Socket::Kind::kRouter, endpoint_);
    ASSERT_TRUE(s.ok());
    store_ = std::move(s).value();
    client_ = NewClient({});
  }
  std::unique_ptr<StoreClient> NewClient(StoreClient::Options opts) {
    auto c = StoreClient::Create(ctx_, endpoint_, "n1", &clock_, opts);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  // The next request the client sent, waiting up to 2 s of wall time.
  std::optional<Captured> Receive(int timeout_ms = 2000) {
    transport::Frames frames;
    if (!testing::WaitUntil([&] { return store_->TryRecv(&frames); }, timeout_ms)) return std::nullopt;
    auto control = wire::DecodeControl(frames.at(1));
    EXPECT_TRUE(control.ok());
    if (!control.ok()) return std::nullopt;
    return Captured{frames[0], std::move(control).value(), {frames.begin() + 2, frames.end()}};
  }
  bool NothingSent() {
    transport::Frames frames;
    return !testing::WaitUntil([&] { return store_->TryRecv(&frames); }, 100);
  }
  void Reply(const Captured& to, wire::ControlBody body, std::vector<std::string> payloads = {}) {
    transport::Frames frames{to.peer, wire::EncodeControl({"fake-store", std::move(body)})};
    for (auto& p : payloads) frames.push_back(std::move(p));
    ASSERT_TRUE(store_->Send(frames).ok());
  }
  // Answers a Put with success for every item.
  void AcceptPut(const Captured& put) {
    const auto& msg = std::get<wire::PutMsg>(put.control.body);
    wire::PutReplyMsg reply{msg.request_id, msg.items};
    Reply(put, reply);
  }
  // Processes replies until `done` (wall-clock bounded).
  bool Await(const std::function<bool()>& done, StoreClient* client = nullptr) {
    client = client ? client : client_.get();
    return testing::WaitUntil([&] {
      client->OnReadable();
      client->Tick();
      return done();
    }, 2000);
  }
  wire::ObjectRef PutOne(const std::string& data) {
    std::optional<StatusOr<wire::ObjectRef>> ref;
    client_->Put(data, [&](StatusOr<wire::ObjectRef> r) { ref = std::move(r); });
    client_->Tick();
    auto put = Receive();
    EXPECT_TRUE(put.has_value());
    if (put) AcceptPut(*put);
    EXPECT_TRUE(Await([&] { return ref.has_value(); }));
    EXPECT_TRUE(ref && ref->ok());
    return ref && ref->ok() ? **ref : wire::ObjectRef{};
  }

  FakeClock clock_;
  transport::Context ctx_;
  std::string endpoint_;
  std::unique_ptr<transport::Socket> store_;
  std::unique_ptr<StoreClient> client_;
};

TEST_F(StoreClientTest, PutsOfOneIterationTravelAsOneMessage) {
  std::vector<std::optional<StatusOr<wire::ObjectRef>>> refs(10);
  for (int i = 0; i < 10; ++i)
    client_->Put("blob-" + std::to_string(i), [&, i](StatusOr<wire::ObjectRef> r) { refs[i] = std::move(r); });
  EXPECT_TRUE(NothingSent());  // nothing leaves before Tick
  client_->Tick();
  auto put = Receive();
  ASSERT_TRUE(put.has_value());
  const auto& msg = std::get<wire::PutMsg>(put->control.body);
  ASSERT_EQ(msg.items.size(), 10u);
  ASSERT_EQ(put->payloads.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(put->payloads[i], "blob-" + std::to_string(i));
    EXPECT_EQ(msg.items[i].checksum, Hash64(put->payloads[i]));
    EXPECT_EQ(msg.items[i].size, put->payloads[i].size());
    EXPECT_NE(msg.items[i].id, 0u);
  }
  EXPECT_TRUE(NothingSent());
  AcceptPut(*put);
  ASSERT_TRUE(Await([&] { return refs[9].has_value(); }));
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(refs[i]->ok());
    const wire::ObjectRef& ref = **refs[i];
    EXPECT_EQ(ref.node, "n1");
    EXPECT_EQ(ref.id, msg.items[i].id);
    EXPECT_EQ(ref.size, put->payloads[i].size());
    EXPECT_EQ(ref.checksum, Hash64("blob-" + std::to_string(i)));
  }
  EXPECT_EQ(client_->stats().puts, 10);
}

TEST_F(StoreClientTest, LargeIterationsSplitAtMaxBatch) {
  for (int i = 0; i < 600; ++i) client_->Put("x" + std::to_string(i), [](StatusOr<wire::ObjectRef>) {});
  client_->Tick();
  std::vector<size_t> sizes;
  while (auto put = Receive(300)) sizes.push_back(std::get<wire::PutMsg>(put->control.body).items.size());
  EXPECT_EQ(sizes, (std::vector<size_t>{256, 256, 88}));
  EXPECT_EQ(client_->in_flight(), 3u);
}

TEST_F(StoreClientTest, PutDataIsCachedForLaterGets) {
  wire::ObjectRef ref = PutOne("turn text offloaded by this worker");
  GetResult got;
  client_->Get({ref}, [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  EXPECT_FALSE(got.has_value());  // callbacks never run inside Get
  client_->Tick();
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok());
  EXPECT_EQ((*got)->at(0), "turn text offloaded by this worker");
  EXPECT_TRUE(NothingSent());
  EXPECT_EQ(client_->stats().cache_hits, 1);
  EXPECT_EQ(client_->stats().cache_misses, 0);
}

TEST_F(StoreClientTest, GetsForTheSameObjectShareOneRequest) {
  wire::ObjectRef ref{"n1", 42, 5, Hash64("hello")};
  wire::ObjectRef other{"n1", 43, 5, Hash64("world")};
  GetResult a, b;
  client_->Get({ref, other}, [&](StatusOr<std::vector<std::string>> r) { a = std::move(r); });
  client_->Get({ref}, [&](StatusOr<std::vector<std::string>> r) { b = std::move(r); });
  client_->Tick();
  auto get = Receive();
  ASSERT_TRUE(get.has_value());
  const auto& msg = std::get<wire::GetMsg>(get->control.body);
  EXPECT_EQ(msg.ids, (std::vector<uint64_t>{42, 43}));
  EXPECT_TRUE(NothingSent());
  Reply(*get, wire::GetReplyMsg{msg.request_id, {{42, 5, ref.checksum, 0, true, ""}, {43, 5, other.checksum, 0, true, ""}}},
        {"hello", "world"});
  ASSERT_TRUE(Await([&] { return a.has_value() && b.has_value(); }));
  ASSERT_TRUE(a->ok() && b->ok());
  EXPECT_EQ(**a, (std::vector<std::string>{"hello", "world"}));
  EXPECT_EQ(**b, (std::vector<std::string>{"hello"}));
  EXPECT_EQ(client_->stats().cache_misses, 3);
}

TEST_F(StoreClientTest, CorruptFetchedDataIsDataLossAndNotCached) {
  wire::ObjectRef ref{"n1", 0xfeed, 5, Hash64("hello")};
  GetResult got;
  client_->Get({ref}, [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  client_->Tick();
  auto get = Receive();
  ASSERT_TRUE(get.has_value());
  uint64_t rid = std::get<wire::GetMsg>(get->control.body).request_id;
  Reply(*get, wire::GetReplyMsg{rid, {{0xfeed, 5, ref.checksum, 0, true, ""}}}, {"jello"});
  ASSERT_TRUE(Await([&] { return got.has_value(); }));
  EXPECT_EQ(got->status().code(), StatusCode::kDataLoss);
  EXPECT_NE(got->status().message().find(Hex64(0xfeed)), std::string::npos) << got->status().message();
  EXPECT_EQ(client_->stats().errors, 1);

  // Not cached: the next Get asks the store again.
  client_->Get({ref}, [](StatusOr<std::vector<std::string>>) {});
  client_->Tick();
  EXPECT_TRUE(Receive().has_value());
}

TEST_F(StoreClientTest, StoreItemErrorsKeepTheirCode) {
  wire::ObjectRef ref{"n1", 7, 3, Hash64("abc")};
  wire::ObjectRef present{"n1", 8, 3, Hash64("def")};
  GetResult got;
  client_->Get({present, ref}, [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  client_->Tick();
  auto get = Receive();
  ASSERT_TRUE(get.has_value());
  uint64_t rid = std::get<wire::GetMsg>(get->control.body).request_id;
  Reply(*get,
        wire::GetReplyMsg{rid, {{8, 3, present.checksum, 0, true, ""},
                                {7, 0, 0, 0, false, "NOT_FOUND: object 0000000000000007 not found"}}},
        {"def", ""});
  ASSERT_TRUE(Await([&] { return got.has_value(); }));
  EXPECT_EQ(got->status().code(), StatusCode::kNotFound);
  EXPECT_EQ(got->status().message(), "object 0000000000000007 not found");

  std::optional<StatusOr<wire::ObjectRef>> put;
  client_->Put("too much", [&](StatusOr<wire::ObjectRef> r) { put = std::move(r); });
  client_->Tick();
  auto req = Receive();
  ASSERT_TRUE(req.has_value());
  auto items = std::get<wire::PutMsg>(req->control.body).items;
  items[0].ok = false;
  items[0].error = "RESOURCE_EXHAUSTED: object does not fit";
  Reply(*req, wire::PutReplyMsg{std::get<wire::PutMsg>(req->control.body).request_id, items});
  ASSERT_TRUE(Await([&] { return put.has_value(); }));
  EXPECT_EQ(put->status().code(), StatusCode::kResourceExhausted);
}

TEST_F(StoreClientTest, ObjectsOnOtherNodesAreUnavailable) {
  GetResult got;
  client_->Get({{"n1", 1, 1, Hash64("a")}, {"n9", 2, 1, Hash64("b")}},
               [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  client_->Tick();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status().code(), StatusCode::kUnavailable);
  EXPECT_NE(got->status().message().find("object on node n9 not reachable"), std::string::npos);
  EXPECT_TRUE(NothingSent());
}

TEST_F(StoreClientTest, RetriesWithTheSameRequestIdThenFails) {
  wire::ObjectRef ref{"n1", 5, 1, Hash64("z")};
  GetResult got;
  client_->Get({ref}, [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  client_->Tick();
  auto first = Receive();
  ASSERT_TRUE(first.has_value());
  uint64_t rid = std::get<wire::GetMsg>(first->control.body).request_id;
  EXPECT_EQ(client_->PollTimeoutMs(60'000), 5000);

  clock_.AdvanceMillis(4999);
  client_->Tick();
  EXPECT_TRUE(NothingSent());
  for (int retry = 1; retry <= 3; ++retry) {
    clock_.AdvanceMillis(1);
    client_->Tick();
    auto again = Receive();
    ASSERT_TRUE(again.has_value()) << "retry " << retry;
    EXPECT_EQ(std::get<wire::GetMsg>(again->control.body).request_id, rid);
    clock_.AdvanceMillis(4999);
  }
  EXPECT_FALSE(got.has_value());
  clock_.AdvanceMillis(1);
  client_->Tick();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status().code(), StatusCode::kUnavailable);
  EXPECT_NE(got->status().message().find(endpoint_), std::string::npos) << got->status().message();
  EXPECT_NE(got->status().message().find(Hex64(5)), std::string::npos) << got->status().message();
  EXPECT_EQ(client_->stats().retries, 3);

  // A late reply to the abandoned request is ignored.
  Reply(*first, wire::GetReplyMsg{rid, {{5, 1, ref.checksum, 0, true, ""}}}, {"z"});
  client_->OnReadable();
  EXPECT_EQ(client_->in_flight(), 0u);
}

TEST_F(StoreClientTest, DuplicateRepliesAfterARetryCompleteOnce) {
  int calls = 0;
  client_->Put("p", [&](StatusOr<wire::ObjectRef> r) {
    EXPECT_TRUE(r.ok());
    ++calls;
  });
  client_->Tick();
  auto first = Receive();
  ASSERT_TRUE(first.has_value());
  clock_.AdvanceMillis(5000);
  client_->Tick();
  auto second = Receive();
  ASSERT_TRUE(second.has_value());
  AcceptPut(*first);
  AcceptPut(*second);
  ASSERT_TRUE(Await([&] { return calls == 1; }));
  // Give the duplicate time to arrive; it completes nothing.
  testing::WaitUntil([&] {
    client_->OnReadable();
    return false;
  }, 100);
  EXPECT_EQ(calls, 1);
}

TEST_F(StoreClientTest, FreesAreBatchedAndEvictTheCache) {
  wire::ObjectRef cached = PutOne("cached payload");
  Refs refs{cached};
  for (uint64_t id = 1; id < 300; ++id) refs.push_back({"n1", id, 1, 0});
  refs.push_back({"n2", 999, 1, 0});  // another node's object: not ours to free
  client_->Free(refs);
  EXPECT_TRUE(NothingSent());
  client_->Tick();
  std::vector<uint64_t> freed;
  while (auto msg = Receive(300)) {
    const auto& f = std::get<wire::FreeMsg>(msg->control.body);
    EXPECT_LE(f.ids.size(), 256u);
    freed.insert(freed.end(), f.ids.begin(), f.ids.end());
  }
  EXPECT_EQ(freed.size(), 300u);
  EXPECT_EQ(freed[0], cached.id);
  EXPECT_EQ(client_->stats().frees, 300);
  EXPECT_EQ(client_->in_flight(), 0u);  // no replies expected

  client_->Get({cached}, [](StatusOr<std::vector<std::string>>) {});
  client_->Tick();
  auto get = Receive();
  ASSERT_TRUE(get.has_value());
  EXPECT_TRUE(std::holds_alternative<wire::GetMsg>(get->control.body));
}

TEST_F(StoreClientTest, OversizedPutFailsLocally) {
  StoreClient::Options opts;
  opts.max_object_bytes = 10;
  auto small = NewClient(opts);
  std::optional<StatusOr<wire::ObjectRef>> ref;
  small->Put(std::string(11, 'x'), [&](StatusOr<wire::ObjectRef> r) { ref = std::move(r); });
  small->Tick();
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(ref->status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(NothingSent());
}

TEST_F(StoreClientTest, PollTimeoutIsZeroWhileWorkIsQueued) {
  EXPECT_EQ(client_->PollTimeoutMs(100), 100);
  EXPECT_EQ(client_->PollTimeoutMs(-1), -1);
  client_->Put("q", [](StatusOr<wire::ObjectRef>) {});
  EXPECT_EQ(client_->PollTimeoutMs(100), 0);
  client_->Tick();
  EXPECT_EQ(client_->PollTimeoutMs(100), 100);
  EXPECT_EQ(client_->PollTimeoutMs(-1), 5000);
}

TEST_F(StoreClientTest, MalformedRepliesAreIgnored) {
  GetResult got;
  client_->Get({{"n1", 3, 1, Hash64("q")}}, [&](StatusOr<std::vector<std::string>> r) { got = std::move(r); });
  client_->Tick();
  auto get = Receive();
  ASSERT_TRUE(get.has_value());
  uint64_t rid = std::get<wire::GetMsg>(get->control.body).request_id;
  ASSERT_TRUE(store_->Send({get->peer, "garbage"}).ok());
  // Right request id, wrong number of payload frames.
  Reply(*get, wire::GetReplyMsg{rid, {{3, 1, Hash64("q"), 0, true, ""}}});
  Reply(*get, wire::GetReplyMsg{rid, {{3, 1, Hash64("q"), 0, true, ""}}}, {"q"});
  ASSERT_TRUE(Await([&] { return got.has_value(); }));
  ASSERT_TRUE(got->ok()) << got->status().ToString();
  EXPECT_EQ((*got)->at(0), "q");
}

}  // namespace
}  // namespace matrix::store
