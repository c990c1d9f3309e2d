#include "common/wire/codec.h"

#include <flatbuffers/flatbuffers.h>
#include <gtest/gtest.h>

#include "schemas/orchestrator_generated.h"

namespace matrix::wire {
namespace {

Task SampleTask() {
  Task t;
  t.run_id = "run-1";
  t.task_id = "coral/p0/r17/t0";
  t.partition = 0;
  t.row = 17;
  t.seed = 42;
  t.attempt = 1;
  t.owner = "p0";
  t.pipeline = "coral";
  t.pipeline_hash = 0xabcdef;
  t.step = "teacher";
  t.counters["turns"] = 3;
  t.vars["agreement"] = "true";
  t.vars["teacher_answer"] = "\"C\"";
  t.input.text = R"({"question":"q"})";
  Turn turn;
  turn.step = "teacher";
  turn.role = "teacher";
  turn.kind = "llm";
  turn.content.ref = ObjectRef{"node-a", 7, 2048, 99};
  turn.tool_calls.push_back({"call_1", "lookup", "{\"id\":1}"});
  turn.prompt_tokens = 100;
  turn.completion_tokens = 20;
  turn.finish_reason = "stop";
  t.history.push_back(turn);
  t.spans.push_back({"teacher", "teacher", "w1", 1, 2, 3, 100, 20, "http://x/v1", 1});
  t.leases.push_back({"env", "sess-1", "w1", 99});
  t.branch = BranchInfo{"parent", 2, 4, "join"};
  t.archive.push_back(ObjectRef{"node-a", 9, 300, 77});
  return t;
}

TEST(TaskCodecTest, RoundTripKeepsEveryField) {
  Task t = SampleTask();
  std::string bytes = EncodeTask(t);
  auto back = DecodeTask(bytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->task_id, t.task_id);
  EXPECT_EQ(back->row, 17u);
  EXPECT_EQ(back->pipeline_hash, 0xabcdefu);
  EXPECT_EQ(back->counters.at("turns"), 3);
  EXPECT_EQ(back->vars.at("teacher_answer"), "\"C\"");
  EXPECT_EQ(back->input.text, t.input.text);
  ASSERT_EQ(back->history.size(), 1u);
  ASSERT_TRUE(back->history[0].content.ref.has_value());
  EXPECT_EQ(back->history[0].content.ref->id, 7u);
  EXPECT_EQ(back->history[0].tool_calls[0].name, "lookup");
  EXPECT_EQ(back->spans[0].endpoint, "http://x/v1");
  EXPECT_EQ(back->leases[0].id, "sess-1");
  ASSERT_TRUE(back->branch.has_value());
  EXPECT_EQ(back->branch->count, 4u);
  ASSERT_EQ(back->archive.size(), 1u);
  EXPECT_EQ(back->archive[0].checksum, 77u);
  auto header = PeekTask(bytes);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->owner, "p0");
}

TEST(TaskCodecTest, SpansKeepOrderAndNamesAcrossManyDistinctNames) {
  Task t = SampleTask();
  t.spans.clear();
  // 40 spans over 24 distinct workers: past the encoder's linear name scan.
  for (int i = 0; i < 40; ++i) {
    t.spans.push_back({i % 2 ? "pong" : "ping", i % 2 ? "pong" : "ping", "worker-" + std::to_string(i % 24), i,
                       i + 1, i + 2, 10 * i, 3 * i, i % 3 ? "" : "http://h:8000/v1", i % 4});
  }
  auto back = DecodeTask(EncodeTask(t));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->spans.size(), t.spans.size());
  for (size_t i = 0; i < t.spans.size(); ++i) {
    const Span& a = t.spans[i];
    const Span& b = back->spans[i];
    EXPECT_EQ(b.step, a.step);
    EXPECT_EQ(b.role, a.role);
    EXPECT_EQ(b.worker, a.worker);
    EXPECT_EQ(b.endpoint, a.endpoint);
    EXPECT_EQ(b.enqueue_us, a.enqueue_us);
    EXPECT_EQ(b.start_us, a.start_us);
    EXPECT_EQ(b.end_us, a.end_us);
    EXPECT_EQ(b.prompt_tokens, a.prompt_tokens);
    EXPECT_EQ(b.completion_tokens, a.completion_tokens);
    EXPECT_EQ(b.attempt, a.attempt);
  }
}

TEST(TaskCodecTest, CountersAndVarsAreKeyedVectorsInByteOrder) {
  Task t = SampleTask();
  for (const char* k : {"b", "B", "ab", "a", "\xff", "steps", "a\x01"}) {
    t.counters[k] = static_cast<int64_t>(std::string(k).size());
    t.vars[k] = "1";
  }
  std::string bytes = EncodeTask(t);
  auto* f = fb::GetTask(bytes.data());
  for (const auto& [k, v] : t.counters) {
    const fb::Counter* c = f->counters()->LookupByKey(k.c_str());
    ASSERT_NE(c, nullptr) << k;
    EXPECT_EQ(c->value(), v);
  }
  for (const auto& [k, v] : t.vars) {
    const fb::Variable* var = f->vars()->LookupByKey(k.c_str());
    ASSERT_NE(var, nullptr) << k;
    EXPECT_EQ(var->json()->str(), v);
  }
}

TEST(TaskCodecTest, RefusesASpanNamingAMissingName) {
  flatbuffers::FlatBufferBuilder b;
  auto names = b.CreateVector(std::vector<flatbuffers::Offset<flatbuffers::String>>{b.CreateString("ping")});
  std::vector<fb::SpanRecord> records{fb::SpanRecord(1, 2, 3, 0, 0, 0, 0, 0, /*worker=*/5, 0)};
  auto spans = b.CreateVectorOfStructs(records);
  auto id = b.CreateString("t1");
  fb::TaskBuilder task(b);
  task.add_task_id(id);
  task.add_span_names(names);
  task.add_span_records(spans);
  b.Finish(task.Finish());
  auto back = DecodeTask(std::string_view(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize()));
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("span name index 5"), std::string::npos) << back.status().message();
}

TEST(TaskCodecTest, RejectsCorruptAndOversizedBuffers) {
  std::string bytes = EncodeTask(SampleTask());
  EXPECT_FALSE(DecodeTask("garbage!").ok());
  EXPECT_FALSE(DecodeTask(bytes.substr(0, bytes.size() / 2)).ok());
  EXPECT_EQ(DecodeTask(bytes, 16).status().code(), StatusCode::kInvalidArgument);
  // Flip bytes everywhere: decoding must fail cleanly or succeed, never crash.
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    auto r = DecodeTask(bad);
    (void)r;
  }
}

TEST(ControlCodecTest, PayloadsPackIntoOneFrameAndRefuseMismatches) {
  std::vector<std::string> payloads = {"a", std::string(3000, 'x'), ""};
  std::vector<std::string> frames = {"envelope", PackPayloads(payloads)};
  auto back = UnpackPayloads(frames, 1, 3);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, payloads);
  EXPECT_FALSE(UnpackPayloads(frames, 1, 2).ok());  // more payloads than items
  EXPECT_FALSE(UnpackPayloads(frames, 1, 4).ok());  // fewer
  EXPECT_FALSE(UnpackPayloads(frames, 1, 3, 100).ok());  // one above the size limit
  frames[1].pop_back();
  frames[1].pop_back();
  EXPECT_FALSE(UnpackPayloads(frames, 1, 3).ok());  // truncated
  EXPECT_TRUE(UnpackPayloads({"envelope"}, 1, 0).ok());
  EXPECT_FALSE(UnpackPayloads({"envelope"}, 1, 1).ok());
  EXPECT_FALSE(UnpackPayloads({"envelope", "x", "y"}, 1, 1).ok());
}

TEST(ControlCodecTest, RoundTripsEachBody) {
  Control reg{"w1", RegisterMsg{"w1", {{"teacher", 100}, {"sink:p0", 64}}, 7, false, "", 0}};
  auto r = DecodeControl(EncodeControl(reg));
  ASSERT_TRUE(r.ok());
  auto& m = std::get<RegisterMsg>(r->body);
  EXPECT_EQ(m.roles[1].first, "sink:p0");
  EXPECT_EQ(m.pipeline_hash, 7u);
  EXPECT_FALSE(m.peer);
  EXPECT_EQ(r->sender, "w1");

  Control link{"b2", RegisterMsg{"peer:b2", {{"teacher", 32}}, 7, true, "n2", 0.5f}};
  auto l = DecodeControl(EncodeControl(link));
  ASSERT_TRUE(l.ok());
  EXPECT_TRUE(std::get<RegisterMsg>(l->body).peer);
  EXPECT_EQ(std::get<RegisterMsg>(l->body).node, "n2");
  EXPECT_FLOAT_EQ(std::get<RegisterMsg>(l->body).load, 0.5f);
  auto hb = DecodeControl(EncodeControl(Control{"b2", HeartbeatMsg{1.25f}}));
  ASSERT_TRUE(hb.ok());
  EXPECT_FLOAT_EQ(std::get<HeartbeatMsg>(hb->body).load, 1.25f);
  EXPECT_FLOAT_EQ(std::get<HeartbeatMsg>(DecodeControl(EncodeControl(Control{"w", HeartbeatMsg{}}))->body).load, -1.0f);

  Control sub{"w1", SubmitMsg{{{5, "student", "t1", false, true}, {6, "", "", true, false}}}};
  auto s = DecodeControl(EncodeControl(sub));
  ASSERT_TRUE(s.ok());
  auto& sm = std::get<SubmitMsg>(s->body);
  ASSERT_EQ(sm.items.size(), 2u);
  EXPECT_EQ(sm.items[0].ack_lease, 5u);
  EXPECT_TRUE(sm.items[1].requeue);

  Control get{"w1", GetReplyMsg{9, {{1, 10, 11, 0, false, "checksum mismatch"}}}};
  auto g = DecodeControl(EncodeControl(get));
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(std::get<GetReplyMsg>(g->body).items[0].error, "checksum mismatch");

  EXPECT_FALSE(DecodeControl("nonsense-nonsense").ok());
}

}  // namespace
}  // namespace matrix::wire
