// Component tests of a real Worker: its event loop on a thread, its broker
// socket connected over inproc:// to the test, which plays the broker
// (register, deliver, take submissions and acknowledgements), a
// FakeChatService instead of HTTP, a FakeObjectStore instead of matrix-store,
// and a FakeClock that only moves when the test moves it (heartbeats,
// re-registration and the drain deadline).
#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "common/base/clock.h"
#include "common/base/files.h"
#include "common/base/json.h"
#include "common/config/pipeline_loader.h"
#include "common/llm/fake_chat_service.h"
#include "common/store/fake_object_store.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "daemons/agent_worker/worker.h"
#include "test/support/test_util.h"

namespace matrix::worker {
namespace {

using testing::TempDir;

// Two LLM roles take turns on a question for `steps` steps; answers are long
// enough to be offloaded to the store and conversations long enough to be
// archived in segments. Every step is a hop through the broker.
constexpr char kPipeline[] = R"(name: component
dataset:
  path: rows.jsonl
  partitions: 1
  id_field: id
run:
  max_concurrent_tasks: 3
  max_attempts: 2
  offload_threshold_bytes: 64
  output_dir: out
  workers: 1
  max_steps_in_place: 0
models:
  m:
    endpoints: [http://127.0.0.1:9/v1]
    model: fake
roles:
  ask:
    type: llm
    model: m
    prompt: "{{ input.q }}"
  reply:
    type: llm
    model: m
    prompt: "{{ input.q }}"
flow:
  start: ask
  max_steps: 50
  steps:
    ask:
      role: ask
      next: reply
    reply:
      role: reply
      next:
        - if: counters.steps >= 20
          goto: done
          reason: enough
        - goto: ask
)";

// The test's side of the broker socket.
class TestBroker {
 public:
  explicit TestBroker(transport::Context& ctx) {
    endpoint_ = "inproc://component-broker-" + std::to_string(++counter_);
    auto s = transport::Socket::Bind(ctx, transport::Socket::Kind::kRouter, endpoint_);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    socket_ = std::move(*s);
  }
  const std::string& endpoint() const { return endpoint_; }

  // One message from the worker within `timeout_ms`, decoded; false on none.
  bool Receive(int timeout_ms) {
    const int64_t deadline = SystemClock::Get()->NowNanos() + int64_t{timeout_ms} * 1'000'000;
    while (SystemClock::Get()->NowNanos() < deadline) {
      if (!socket_->WaitForInput(20)) continue;
      transport::Frames frames;
      if (!socket_->TryRecv(&frames)) continue;
      Handle(frames);
      return true;
    }
    return false;
  }

  // Plays the broker until `done` holds or the time is up: answers
  // registrations, queues submissions and delivers them back, in batches.
  bool Serve(const std::function<bool()>& done, int timeout_ms) {
    const int64_t deadline = SystemClock::Get()->NowNanos() + int64_t{timeout_ms} * 1'000'000;
    while (!done()) {
      if (SystemClock::Get()->NowNanos() > deadline) return false;
      DeliverQueued();
      Receive(20);
    }
    return true;
  }

  void DeliverQueued() {
    if (queue_.empty() || worker_.empty()) return;
    wire::DeliverMsg deliver;
    std::vector<std::string> payloads;
    while (!queue_.empty()) {
      auto [role, payload] = std::move(queue_.front());
      queue_.pop_front();
      const uint64_t lease = next_lease_++;
      outstanding_.insert(lease);
      deliver.items.push_back({lease, role, 1, 0});
      payloads.push_back(std::move(payload));
      ++delivered_by_role_[role.substr(0, role.find(':'))];
    }
    transport::Frames frames{worker_, wire::EncodeControl(wire::Control{"broker", std::move(deliver)}),
                             wire::PackPayloads(payloads)};
    ASSERT_TRUE(socket_->Send(std::move(frames)).ok());
  }

  int registrations() const { return registrations_; }
  int heartbeats() const { return heartbeats_; }
  size_t outstanding() const { return outstanding_.size(); }
  size_t queued() const { return queue_.size(); }
  int acks() const { return acks_; }
  int requeued() const { return requeued_; }
  int double_acks() const { return double_acks_; }
  // The most archive references one submitted task carried.
  size_t max_archive_refs() const { return max_archive_refs_; }
  const std::map<std::string, int>& delivered_by_role() const { return delivered_by_role_; }

 private:
  void Handle(const transport::Frames& frames) {
    ASSERT_GE(frames.size(), 2u);
    auto control = wire::DecodeControl(frames[1]);
    ASSERT_TRUE(control.ok()) << control.status().ToString();
    if (auto* reg = std::get_if<wire::RegisterMsg>(&control->body)) {
      worker_ = frames[0];
      ++registrations_;
      wire::RegisterAckMsg ack{"test-broker", 1000};
      ASSERT_TRUE(socket_->Send({worker_, wire::EncodeControl(wire::Control{"broker", ack})}).ok());
      EXPECT_FALSE(reg->roles.empty());
      return;
    }
    if (std::get_if<wire::HeartbeatMsg>(&control->body)) {
      ++heartbeats_;
      return;
    }
    auto* submit = std::get_if<wire::SubmitMsg>(&control->body);
    ASSERT_NE(submit, nullptr) << "unexpected message from the worker";
    size_t with_payload = 0;
    for (const auto& item : submit->items) with_payload += item.has_payload;
    auto payloads = wire::UnpackPayloads(frames, 2, with_payload);
    ASSERT_TRUE(payloads.ok()) << payloads.status().ToString();
    size_t next = 0;
    for (const auto& item : submit->items) {
      if (item.ack_lease != 0) {
        if (outstanding_.erase(item.ack_lease) == 0) ++double_acks_;
        ++acks_;
        requeued_ += item.requeue;
      }
      if (!item.has_payload) continue;
      auto task = wire::DecodeTask((*payloads)[next]);
      ASSERT_TRUE(task.ok()) << task.status().ToString();
      max_archive_refs_ = std::max(max_archive_refs_, task->archive.size());
      queue_.emplace_back(item.role, std::move((*payloads)[next++]));
    }
  }

  static inline std::atomic<int> counter_{0};
  std::string endpoint_;
  std::unique_ptr<transport::Socket> socket_;
  std::string worker_;  // the worker's routing identity
  std::deque<std::pair<std::string, std::string>> queue_;
  std::set<uint64_t> outstanding_;
  uint64_t next_lease_ = 1;
  int registrations_ = 0, heartbeats_ = 0, acks_ = 0, requeued_ = 0, double_acks_ = 0;
  size_t max_archive_refs_ = 0;
  std::map<std::string, int> delivered_by_role_;
};

class WorkerComponentTest : public ::testing::Test {
 protected:
  // Writes `rows` questions and starts a worker owning partition 0.
  void Start(int rows, llm::FakeChatService::Responder respond, const char* pipeline = kPipeline) {
    std::string data;
    for (int i = 0; i < rows; ++i)
      data += DumpJson(Json{{"id", "q" + std::to_string(i)}, {"q", "question " + std::to_string(i)}}) + "\n";
    ASSERT_TRUE(WriteFileAtomic(dir_.File("rows.jsonl"), data).ok());
    ASSERT_TRUE(WriteFileAtomic(dir_.File("pipeline.yaml"), pipeline).ok());
    auto loaded = config::LoadPipelineOrError(dir_.File("pipeline.yaml"));
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    WorkerConfig wc;
    wc.worker_id = "component";
    wc.broker_endpoint = broker_.endpoint();
    wc.run_dir = dir_.path();
    wc.output_dir = dir_.File("out");
    wc.partitions = {0};
    wc.grace_s = 5;
    wc.sole_worker = true;
    WorkerServices services;
    auto chat = std::make_unique<llm::FakeChatService>(std::move(respond));
    auto store = std::make_unique<store::FakeObjectStore>(wc.node);
    chat_ = chat.get();
    store_ = store.get();
    services.llm = std::move(chat);
    services.store = std::move(store);
    auto w = Worker::Create(wc, std::make_shared<const config::Pipeline>(std::move(*loaded)), &ctx_,
                            &clock_, std::move(services));
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    worker_ = std::move(*w);
    thread_ = std::thread([this] {
      run_status_ = worker_->Run();
      exited_ = true;
    });
  }

  // Stop(), then the drain deadline (grace_s on the fake clock) passes.
  void StopWorker() {
    worker_->Stop();
    clock_.AdvanceMillis(6'000);
    broker_.Serve([&] { return exited_.load(); }, 30'000);
    thread_.join();
    worker_.reset();
  }

  void TearDown() override {
    if (worker_) StopWorker();
  }

  std::vector<Json> Records() {
    std::vector<Json> out;
    auto text = ReadFile(dir_.File("out/p0.jsonl"));
    if (!text.ok()) return out;
    std::istringstream lines(*text);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) out.push_back(Json::parse(line));
    return out;
  }

  TempDir dir_;
  transport::Context ctx_;
  FakeClock clock_;
  TestBroker broker_{ctx_};
  llm::FakeChatService* chat_ = nullptr;
  store::FakeObjectStore* store_ = nullptr;
  std::unique_ptr<Worker> worker_;
  std::thread thread_;
  Status run_status_;
  std::atomic<bool> exited_{false};
};

// A long answer (offloaded: above the 64-byte threshold) naming the request.
llm::ChatResult LongAnswer(const llm::ChatRequest& req) {
  const size_t turns = req.body["messages"].size();
  return llm::FakeChatService::Answer(req.sticky_key + " turn " + std::to_string(turns) + " " +
                                      std::string(100, 'x'));
}

// An HTTP 400 answer with the server's text.
llm::ChatResult BadRequest(const std::string& text) {
  llm::ChatResult bad;
  bad.status = InvalidArgument("HTTP 400: " + text);
  bad.http_status = 400;
  return bad;
}

TEST_F(WorkerComponentTest, TasksRunEveryStepThroughOffloadAndArchiveAndTheirRecordsAreWritten) {
  Start(5, LongAnswer);
  ASSERT_TRUE(broker_.Receive(15'000)) << "no registration";
  ASSERT_EQ(broker_.registrations(), 1);
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 5 && broker_.outstanding() == 0; }, 30'000))
      << Records().size() << " records, " << broker_.outstanding() << " leases outstanding";

  std::set<std::string> ids;
  for (const Json& r : Records()) {
    ids.insert(r["task_id"].get<std::string>());
    EXPECT_EQ(r["status"], "done") << r.dump();
    EXPECT_EQ(r["reason"], "enough");
    // Twenty model turns, the early ones back from a chain of archived
    // segments and their offloaded text back from the store, in order.
    ASSERT_EQ(r["turns"].size(), 20u) << r.dump();
    for (size_t t = 0; t < 20; ++t) {
      const std::string content = r["turns"][t]["content"].get<std::string>();
      EXPECT_EQ(content.rfind(r["task_id"].get<std::string>() + " turn ", 0), 0u) << t << ": " << content;
      EXPECT_NE(content.find(std::string(100, 'x')), std::string::npos);
    }
  }
  EXPECT_EQ(ids.size(), 5u);
  // Each call saw the conversation so far: 1 prompt message, then one more per turn.
  const auto requests = chat_->requests();
  ASSERT_EQ(requests.size(), 100u);
  std::map<std::string, size_t> seen;
  for (const auto& req : requests) {
    const size_t n = req.body["messages"].size();
    EXPECT_GT(n, seen[req.sticky_key]) << req.sticky_key;
    seen[req.sticky_key] = n;
  }
  // Every hop went through the broker: 5 tasks × 20 steps, 5 records.
  EXPECT_EQ(broker_.delivered_by_role().at("ask"), 50);
  EXPECT_EQ(broker_.delivered_by_role().at("reply"), 50);
  EXPECT_EQ(broker_.delivered_by_role().at("sink"), 5);
  EXPECT_EQ(broker_.double_acks(), 0);
  // Several segments were archived per task, and a task carried only the newest.
  EXPECT_EQ(broker_.max_archive_refs(), 1u);
  // Content was offloaded and archived, and everything was freed at the end.
  EXPECT_GT(store_->stats().puts, 0);
  EXPECT_GT(store_->stats().gets, 0);
  EXPECT_EQ(store_->objects(), 0u) << store_->bytes() << " bytes left in the store";
}

TEST_F(WorkerComponentTest, StepsInPlaceHopEveryFewStepsAndKeepTheRecordsWhole) {
  // Up to 4 steps in place per delivery: admission runs steps 1-4, each
  // delivery one step and 4 more (5-9, 10-14, 15-19, 20), and the owner
  // writes the record where the task ended.
  std::string pipeline = kPipeline;
  pipeline.replace(pipeline.find("max_steps_in_place: 0"), 21, "max_steps_in_place: 4");
  Start(5, LongAnswer, pipeline.c_str());
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 5 && broker_.outstanding() == 0; }, 30'000))
      << Records().size() << " records, " << broker_.outstanding() << " leases outstanding";
  for (const Json& r : Records()) {
    EXPECT_EQ(r["status"], "done") << r.dump();
    ASSERT_EQ(r["turns"].size(), 20u) << r.dump();
    for (size_t t = 0; t < 20; ++t) {
      const std::string content = r["turns"][t]["content"].get<std::string>();
      EXPECT_EQ(content.rfind(r["task_id"].get<std::string>() + " turn ", 0), 0u) << t << ": " << content;
    }
    EXPECT_EQ(r["hops"], 4) << r.dump();
  }
  // Steps 5 and 15 are `ask`, 10 and 20 `reply`; no record went through the broker.
  EXPECT_EQ(broker_.delivered_by_role().at("ask"), 10);
  EXPECT_EQ(broker_.delivered_by_role().at("reply"), 10);
  EXPECT_EQ(broker_.delivered_by_role().count("sink"), 0u);
  EXPECT_EQ(broker_.double_acks(), 0);
  // Each call saw the whole conversation so far, wherever its step ran.
  std::map<std::string, size_t> seen;
  for (const auto& req : chat_->requests()) {
    const size_t n = req.body["messages"].size();
    EXPECT_EQ(n, seen[req.sticky_key] + 1) << req.sticky_key;
    seen[req.sticky_key] = n;
  }
  EXPECT_EQ(store_->objects(), 0u) << store_->bytes() << " bytes left in the store";
}

TEST_F(WorkerComponentTest, StepsInPlaceKeepEachRoleUnderItsConcurrency) {
  // Two steps of a role at a time: the tasks admitted after the first two
  // go through the broker, and what it delivers waits for room here.
  std::string pipeline = kPipeline;
  pipeline.replace(pipeline.find("max_steps_in_place: 0"), 21, "max_steps_in_place: 4");
  pipeline.replace(pipeline.find("max_concurrent_tasks: 3"), 23, "max_concurrent_tasks: 5");
  for (const char* role : {"  ask:\n    type: llm\n", "  reply:\n    type: llm\n"}) {
    const size_t at = pipeline.find(role) + std::string(role).size();
    pipeline.insert(at, "    concurrency: 2\n");
  }
  Start(5, LongAnswer, pipeline.c_str());
  chat_->Hold(true);
  ASSERT_TRUE(broker_.Serve([&] { return broker_.delivered_by_role().count("ask") && chat_->held() >= 2; }, 10'000));
  broker_.Serve([] { return false; }, 300);
  EXPECT_EQ(chat_->held(), 2u) << "calls of `ask` in flight";
  chat_->Hold(false);
  chat_->Release();
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 5 && broker_.outstanding() == 0; }, 30'000))
      << Records().size() << " records, " << broker_.outstanding() << " leases outstanding";
  for (const Json& r : Records()) {
    EXPECT_EQ(r["status"], "done") << r.dump();
    EXPECT_EQ(r["turns"].size(), 20u);
  }
  EXPECT_EQ(broker_.double_acks(), 0);
}

TEST_F(WorkerComponentTest, AModelErrorEndsOnlyItsTaskWithAReason) {
  Start(4, [](const llm::ChatRequest& req) {
    if (req.body.dump().find("question 2") == std::string::npos) return LongAnswer(req);
    return BadRequest("context length exceeded");
  });
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 4 && broker_.outstanding() == 0; }, 30'000));
  std::map<std::string, Json> by_id;
  for (const Json& r : Records()) by_id[r["input"]["id"].get<std::string>()] = r;
  ASSERT_EQ(by_id.size(), 4u);
  for (const char* id : {"q0", "q1", "q3"}) EXPECT_EQ(by_id[id]["status"], "done") << by_id[id].dump();
  EXPECT_EQ(by_id["q2"]["status"], "failed");
  EXPECT_EQ(by_id["q2"]["reason"], "llm_error") << by_id["q2"].dump();
  EXPECT_NE(by_id["q2"]["error"].get<std::string>().find("context length"), std::string::npos);
}

TEST_F(WorkerComponentTest, HeartbeatsAndReRegistrationFollowTheInjectedClock) {
  Start(1, nullptr);
  chat_->Hold(true);
  ASSERT_TRUE(broker_.Receive(15'000));
  ASSERT_EQ(broker_.registrations(), 1);
  // Frozen clock: no heartbeat however long the test waits.
  broker_.Serve([] { return false; }, 300);
  EXPECT_EQ(broker_.heartbeats(), 0);
  // 1.5 s on the fake clock: a heartbeat.
  clock_.AdvanceMillis(1'500);
  ASSERT_TRUE(broker_.Serve([&] { return broker_.heartbeats() >= 1; }, 5'000));
  // 3.5 s more with no word from the broker: the worker registers again.
  clock_.AdvanceMillis(3'500);
  ASSERT_TRUE(broker_.Serve([&] { return broker_.registrations() == 2; }, 5'000));
  chat_->Hold(false);
  chat_->Release();
}

TEST_F(WorkerComponentTest, StopHandsTasksInFlightBackAndShutsTheModelClientDown) {
  Start(3, LongAnswer);
  chat_->Hold(true);
  ASSERT_TRUE(broker_.Receive(15'000));
  // Three tasks admitted and delivered; their first calls wait in the fake.
  ASSERT_TRUE(broker_.Serve([&] { return chat_->held() == 3; }, 10'000)) << chat_->held();
  EXPECT_EQ(broker_.outstanding(), 3u);
  worker_->Stop();
  // Draining waits for the calls until grace_s (5 s) passes on the fake clock.
  broker_.Serve([] { return false; }, 300);
  EXPECT_EQ(broker_.requeued(), 0);
  clock_.AdvanceMillis(6'000);
  ASSERT_TRUE(broker_.Serve([&] { return broker_.outstanding() == 0; }, 10'000));
  EXPECT_EQ(broker_.requeued(), 3);
  thread_.join();
  EXPECT_TRUE(run_status_.ok()) << run_status_.ToString();
  EXPECT_TRUE(chat_->shut_down());
  worker_.reset();
  EXPECT_TRUE(Records().empty());
}

TEST_F(WorkerComponentTest, AStoreThatLostItsObjectsCostsTheTaskARestartFromItsRow) {
  std::atomic<int> calls{0};
  store::FakeObjectStore** store = &store_;
  Start(1, [&calls, store](const llm::ChatRequest& req) {
    // After the fourth call every stored object is gone, as after a store
    // restart without its disk.
    if (++calls == 4) (*store)->Forget();
    return LongAnswer(req);
  });
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 1 && broker_.outstanding() == 0; }, 30'000));
  const Json r = Records()[0];
  EXPECT_EQ(r["status"], "done") << r.dump();
  // Four calls, then the task lost its stored history and ran again from
  // its row (free: the loss was the store's, not the task's).
  EXPECT_EQ(r["turns"].size(), 20u);
  EXPECT_GE(calls.load(), 24);
}

}  // namespace
// Best of four: each branch samples an answer and extracts its letter; the
// judge sees every candidate; the vote picks the most frequent letter.
constexpr char kBestOfFour[] = R"yaml(name: best_of_four
dataset:
  path: rows.jsonl
  id_field: id
run:
  max_concurrent_tasks: 3
  offload_threshold_bytes: 64
  output_dir: out
models:
  m:
    endpoints: [http://127.0.0.1:9/v1]
    model: fake
roles:
  sample:
    type: llm
    model: m
    conversation: false
    prompt: "{{ input.q }} sample {{ task.branch.index }}"
  pick:
    type: extract
    from: last_turn.content
    regex: "answer ([A-Z])"
    var: answer
  judge:
    type: llm
    model: m
    conversation: false
    prompt: "judge:{% for b in branches %} {{ b.index }}={{ b.vars.answer | default('none') }}/{{ b.status }}{% endfor %}"
flow:
  start: samples
  max_tokens: ${params.budget}
  steps:
    samples:
      fanout:
        count: 4
        branch: sample
        join: judge
        value: vars.answer
        combine: vote
        first: ${params.first}
        deadline_s: 5
      next: done
    sample:
      role: sample
      next: pick
    pick:
      role: pick
      next: join
    judge:
      role: judge
params: {budget: 0, first: 0}
)yaml";

std::string WithParams(const char* pipeline, const std::string& params) {
  std::string text = pipeline;
  text.replace(text.find("params: {budget: 0, first: 0}"), 29, params);
  return text;
}

// Branch 2 answers C, the others B (padded past the offload threshold);
// the judge answers with what its prompt listed.
llm::ChatResult Sampler(const llm::ChatRequest& req) {
  const std::string prompt = req.body["messages"].back()["content"].get<std::string>();
  if (prompt.rfind("judge:", 0) == 0) return llm::FakeChatService::Answer("verdict for" + prompt.substr(6));
  const bool c = prompt.find("sample 2") != std::string::npos;
  return llm::FakeChatService::Answer(std::string("the answer B ") + std::string(80, '.') + (c ? " answer C" : ""),
                                      100, 20);
}

TEST_F(WorkerComponentTest, FanOutRunsEveryBranchAndTheJoinSeesAndCombinesThem) {
  Start(3, [](const llm::ChatRequest& req) {
    llm::ChatResult r = Sampler(req);
    if (req.body.dump().find("sample 2") != std::string::npos) r.content = "answer C " + std::string(80, '.');
    return r;
  }, kBestOfFour);
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 3 && broker_.outstanding() == 0; }, 30'000))
      << Records().size() << " records";
  for (const Json& r : Records()) {
    ASSERT_EQ(r["status"], "done") << r.dump();
    const Json& v = r["vars"];
    ASSERT_EQ(v["branches"].size(), 4u) << r.dump();
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(v["branches"][i]["index"], i);
      EXPECT_EQ(v["branches"][i]["status"], "done");
      EXPECT_EQ(v["branches"][i]["reason"], "join");
      EXPECT_EQ(v["branches"][i]["value"], i == 2 ? "C" : "B") << r.dump();
      EXPECT_EQ(v["branches"][i]["tokens"], 120);
    }
    EXPECT_EQ(v["combined"], "B");
    EXPECT_EQ(v["combined_votes"], 3);
    // Every branch's turn is in the record (not part of the conversation),
    // then the judge's, which saw all four candidates.
    ASSERT_EQ(r["turns"].size(), 5u) << r.dump();
    std::set<int> branch_turns;
    for (size_t t = 0; t < 4; ++t) {
      EXPECT_EQ(r["turns"][t]["conversation"], false);
      EXPECT_EQ(r["turns"][t]["extra"]["fanout"], "samples");
      branch_turns.insert(r["turns"][t]["extra"]["branch"].get<int>());
      EXPECT_NE(r["turns"][t]["content"].get<std::string>().find(std::string(80, '.')), std::string::npos);
    }
    EXPECT_EQ(branch_turns.size(), 4u);
    EXPECT_EQ(r["turns"][4]["content"], "verdict for 0=B/done 1=B/done 2=C/done 3=B/done");
    EXPECT_EQ(r["counters"]["tokens"], 4 * 120 + 11);  // the judge: 10 + 1
    EXPECT_EQ(r["counters"]["branches_ok"], 4);
  }
  // Three parents and twelve branches, each record written once.
  EXPECT_EQ(broker_.delivered_by_role().at("sample"), 12);
  EXPECT_EQ(broker_.delivered_by_role().at("judge"), 3);
  EXPECT_EQ(broker_.double_acks(), 0);
  EXPECT_EQ(store_->objects(), 0u) << store_->bytes() << " bytes left in the store";
}

TEST_F(WorkerComponentTest, AFailedBranchIsReportedToTheJoinWhichStillRuns) {
  Start(1, [](const llm::ChatRequest& req) {
    if (req.body.dump().find("sample 1") == std::string::npos) return Sampler(req);
    return BadRequest("bad request");
  }, kBestOfFour);
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 1 && broker_.outstanding() == 0; }, 30'000));
  const Json r = Records()[0];
  EXPECT_EQ(r["status"], "done") << r.dump();
  EXPECT_EQ(r["vars"]["branches"][1]["status"], "failed");
  EXPECT_EQ(r["vars"]["branches"][1]["reason"], "llm_error");
  EXPECT_NE(r["vars"]["branches"][1]["error"].get<std::string>().find("bad request"), std::string::npos);
  EXPECT_EQ(r["vars"]["combined"], "B");
  EXPECT_EQ(r["vars"]["combined_votes"], 2);
  EXPECT_EQ(r["counters"]["branches_ok"], 3);
  EXPECT_EQ(r["turns"].back()["content"], "verdict for 0=B/done 1=none/failed 2=C/done 3=B/done");
}

TEST_F(WorkerComponentTest, TheJoinResumesAfterTheFirstKAndDropsLateBranches) {
  Start(1, Sampler, WithParams(kBestOfFour, "params: {budget: 0, first: 2}").c_str());
  ASSERT_TRUE(broker_.Receive(15'000));
  chat_->Hold(true);
  ASSERT_TRUE(broker_.Serve([&] { return chat_->held() == 4; }, 30'000));
  chat_->Release(2);
  ASSERT_TRUE(broker_.Serve([&] { return chat_->held() == 3; }, 30'000));  // two left, and the judge
  chat_->Hold(false);
  chat_->Release();
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 1 && broker_.outstanding() == 0 && store_->objects() == 0; },
                            30'000));
  const Json r = Records()[0];
  EXPECT_EQ(r["status"], "done") << r.dump();
  int pending = 0;
  for (const auto& b : r["vars"]["branches"]) pending += b["status"] == "pending";
  EXPECT_EQ(pending, 2) << r.dump();
  EXPECT_EQ(r["counters"]["branches_ok"], 2);
  EXPECT_EQ(r["turns"].size(), 3u);
}

TEST_F(WorkerComponentTest, TheJoinResumesAtItsDeadlineWithWhatArrived) {
  Start(1, Sampler, kBestOfFour);
  ASSERT_TRUE(broker_.Receive(15'000));
  chat_->Hold(true);
  ASSERT_TRUE(broker_.Serve([&] { return chat_->held() == 4; }, 30'000));
  chat_->Release(1);
  broker_.Serve([] { return false; }, 300);
  clock_.AdvanceMillis(6'000);  // past deadline_s: 5
  ASSERT_TRUE(broker_.Serve([&] { return chat_->held() == 4; }, 30'000));  // three branches and the judge
  chat_->Hold(false);
  chat_->Release();
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 1 && broker_.outstanding() == 0; }, 30'000));
  const Json r = Records()[0];
  EXPECT_EQ(r["counters"]["branches_ended"], 1) << r.dump();
  EXPECT_EQ(r["vars"]["branches"][3]["reason"], "deadline") << r.dump();
}

TEST_F(WorkerComponentTest, ATokenBudgetStopsTheGraphWithAReason) {
  // 100 tokens left for four branches: each may use 25, each call costs 120.
  Start(1, Sampler, WithParams(kBestOfFour, "params: {budget: 100, first: 0}").c_str());
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 1 && broker_.outstanding() == 0; }, 30'000));
  const Json r = Records()[0];
  for (const auto& b : r["vars"]["branches"]) EXPECT_EQ(b["reason"], "token_budget") << r.dump();
  EXPECT_EQ(r["status"], "failed");
  EXPECT_EQ(r["reason"], "token_budget") << r.dump();
  EXPECT_EQ(chat_->requests().size(), 4u);  // the judge never ran
}

// A debate: two rounds of a fan-out in a loop, each branch itself a fan-out
// of two speakers.
constexpr char kDebate[] = R"yaml(name: debate
dataset:
  path: rows.jsonl
  id_field: id
run:
  output_dir: out
models:
  m:
    endpoints: [http://127.0.0.1:9/v1]
    model: fake
roles:
  speak:
    type: llm
    model: m
    conversation: false
    prompt: "{{ input.q }} round {{ counters.round }} {{ vars.last_round | default('') }}"
flow:
  start: round
  steps:
    round:
      fanout: {count: 2, branch: team, combine: concat}
      set: {last_round: vars.combined}
      next:
        - if: counters.round >= 2
          goto: done
        - goto: round
    team:
      fanout: {count: 2, branch: speaker, combine: concat}
      next: join
    speaker:
      role: speak
      next: join
)yaml";

TEST_F(WorkerComponentTest, NestedFanOutInsideALoopRunsEveryRound) {
  Start(2, [](const llm::ChatRequest& req) {
    return llm::FakeChatService::Answer("said:" + req.body["messages"].back()["content"].get<std::string>().substr(0, 20));
  }, kDebate);
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 2 && broker_.outstanding() == 0; }, 30'000))
      << Records().size();
  for (const Json& r : Records()) {
    EXPECT_EQ(r["status"], "done") << r.dump();
    EXPECT_EQ(r["counters"]["round"], 2);
    // 2 rounds x 2 teams x 2 speakers, every turn kept.
    EXPECT_EQ(r["turns"].size(), 8u) << r.dump();
    ASSERT_EQ(r["vars"]["branches"].size(), 2u);
    EXPECT_EQ(r["vars"]["branches"][0]["status"], "done");
    EXPECT_NE(r["vars"]["last_round"].get<std::string>().find("said:"), std::string::npos);
  }
  EXPECT_EQ(chat_->requests().size(), 16u);
  EXPECT_EQ(store_->objects(), 0u);
}

// Structured output: a verdict as JSON that must match a schema; the
// model is asked for token logprobs and ids.
constexpr char kVerdict[] = R"yaml(name: verdict
dataset:
  path: rows.jsonl
  id_field: id
run:
  output_dir: out
models:
  m:
    endpoints: [http://127.0.0.1:9/v1]
    model: fake
    logprobs: true
    top_logprobs: 2
    token_ids: true
roles:
  judge:
    type: llm
    model: m
    prompt: "{{ input.q }}"
    format_retries: 2
    response_format:
      type: json_schema
      schema:
        type: object
        properties:
          score: {type: integer, minimum: 1, maximum: 5}
        required: [score]
  read:
    type: extract
    from: last.content
    json: true
    fields: {score: score}
flow:
  start: judge
  steps:
    judge:
      role: judge
      next: read
    read:
      role: read
      next: done
)yaml";

TEST_F(WorkerComponentTest, StructuredAnswersAreCheckedRetriedAndRecordedWithTokenData) {
  // q0: a good verdict at once; q1: prose, then a verdict out of range, then
  // a good one; q2: never valid.
  std::map<std::string, int> calls;
  std::mutex mu;
  Start(3, [&](const llm::ChatRequest& req) {
    const std::string q = req.body["messages"].back()["content"].get<std::string>();
    int n;
    {
      std::lock_guard<std::mutex> lock(mu);
      n = calls[q]++;
    }
    std::string content = R"({"score": 4})";
    if (q == "question 1") content = n == 0 ? "I think it deserves a four." : n == 1 ? R"({"score": 9})" : content;
    if (q == "question 2") content = "```json\n{\"score\": \"high\"}\n```";
    llm::ChatResult r = llm::FakeChatService::Answer(content, 20, 5);
    r.raw = {{"choices", {{{"token_ids", {11, 12, 13, 14, 15}},
                           {"logprobs", {{"content", {{{"token", "{\""}, {"logprob", -0.25},
                                                       {"top_logprobs", {{{"token", "{\""}, {"logprob", -0.25}},
                                                                         {{"token", "The"}, {"logprob", -1.5}}}}}}}}}}}},
             {"prompt_token_ids", {1, 2, 3}}};
    return r;
  }, kVerdict);
  ASSERT_TRUE(broker_.Serve([&] { return Records().size() == 3 && broker_.outstanding() == 0; }, 30'000));
  std::map<std::string, Json> by_id;
  for (const Json& r : Records()) by_id[r["input"]["id"].get<std::string>()] = r;
  EXPECT_EQ(by_id["q0"]["status"], "done");
  EXPECT_EQ(by_id["q0"]["vars"]["score"], 4);
  const Json& extra = by_id["q0"]["turns"][0]["extra"];
  EXPECT_EQ(extra["token_ids"], Json::parse("[11, 12, 13, 14, 15]")) << extra.dump();
  EXPECT_EQ(extra["prompt_token_ids"], Json::parse("[1, 2, 3]"));
  EXPECT_EQ(extra["logprobs"], Json::parse("[-0.25]"));
  EXPECT_EQ(extra["top_logprobs"][0][1]["token"], "The");
  EXPECT_FALSE(extra.contains("format_retries"));

  EXPECT_EQ(by_id["q1"]["status"], "done") << by_id["q1"].dump();
  EXPECT_EQ(by_id["q1"]["vars"]["score"], 4);
  EXPECT_EQ(by_id["q1"]["turns"][0]["extra"]["format_retries"], 2);
  EXPECT_EQ(by_id["q1"]["turns"][0]["usage"]["completion_tokens"], 15);  // all three answers

  EXPECT_EQ(by_id["q2"]["status"], "failed");
  EXPECT_EQ(by_id["q2"]["reason"], "invalid_output") << by_id["q2"].dump();
  EXPECT_NE(by_id["q2"]["error"].get<std::string>().find("after 3 answers"), std::string::npos);
  EXPECT_NE(by_id["q2"]["turns"][0]["extra"]["format_error"].get<std::string>().find("score"), std::string::npos)
      << by_id["q2"].dump();
  // What was asked: the schema, logprobs and token ids; a retry with another seed.
  const auto requests = chat_->requests();
  ASSERT_EQ(requests.size(), 1u + 3u + 3u);
  for (const auto& req : requests) {
    EXPECT_EQ(req.body["response_format"]["type"], "json_schema");
    EXPECT_EQ(req.body["response_format"]["json_schema"]["name"], "judge");
    EXPECT_EQ(req.body["logprobs"], true);
    EXPECT_EQ(req.body["top_logprobs"], 2);
    EXPECT_EQ(req.body["return_token_ids"], true);
  }
  std::set<int64_t> seeds;
  for (const auto& req : requests)
    if (req.body["messages"].back()["content"] == "question 2") seeds.insert(req.body["seed"].get<int64_t>());
  EXPECT_EQ(seeds.size(), 3u);
}

}  // namespace matrix::worker
