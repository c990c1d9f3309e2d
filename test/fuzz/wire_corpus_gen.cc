// Writes the seed corpus of wire_fuzz: encoded tasks (minimal, filtered, one
// with every field set) and one control message of each body type, one file
// each, into the folder given as the only argument. Run by hand when the
// schemas change; the files are kept in test/fuzz/corpus/wire/.
//   wire-corpus-gen test/fuzz/corpus/wire
#include <cstdio>
#include <fstream>
#include <string>

#include "common/wire/codec.h"

namespace {

using namespace matrix::wire;

void Write(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
  std::printf("%s/%s (%zu bytes)\n", dir.c_str(), name.c_str(), bytes.size());
}

Task FullTask() {
  Task t;
  t.run_id = "run-20260101";
  t.task_id = "coral-p0-r17-t0";
  t.partition = 0;
  t.row = 17;
  t.trial = 1;
  t.seed = 0x1234abcd;
  t.attempt = 2;
  t.owner = "p0";
  t.pipeline = "coral";
  t.pipeline_hash = 0xfeedbeefcafe;
  t.step = "extract_teacher";
  t.counters = {{"turns", 3}, {"steps", 7}};
  t.vars = {{"teacher_answer", "\"C\""}, {"agreement", "false"}};
  t.input.text = R"({"question_id": 17, "question": "Which is prime?", "options": ["4", "6", "7"], "answer": "C"})";
  Turn turn;
  turn.step = "teacher";
  turn.role = "teacher";
  turn.kind = "llm";
  turn.content.text = "The answer is (C).";
  turn.tool_calls.push_back({"call_1", "lookup", R"({"q": "prime"})"});
  turn.prompt_tokens = 120;
  turn.completion_tokens = 40;
  turn.finish_reason = "stop";
  turn.endpoint = "http://127.0.0.1:8000/v1";
  turn.model = "meta-llama/Llama-3.1-8B-Instruct";
  turn.start_us = 1000;
  turn.end_us = 2000;
  turn.attempts = 1;
  turn.extra = R"({"logprob": -0.5})";
  t.history.push_back(turn);
  Turn offloaded;
  offloaded.step = "student";
  offloaded.role = "student";
  offloaded.conversation = false;
  offloaded.content.ref = ObjectRef{"node-a", 42, 4096, 0x99};
  t.history.push_back(offloaded);
  t.leases.push_back({"gpu", "slot-3", "worker-1", 5000});
  t.spans.push_back({"teacher", "teacher", "worker-1", 900, 1000, 2000, 120, 40, "http://127.0.0.1:8000/v1", 1});
  t.branch = BranchInfo{"coral-p0-r17", 1, 4, "judge"};
  t.created_us = 100;
  t.enqueue_us = 2100;
  t.hops = 5;
  t.archive.push_back({"node-a", 7, 8192, 0x77});
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];

  Task minimal;
  minimal.task_id = "t1";
  Write(dir, "task_minimal", EncodeTask(minimal));
  Task filtered;
  filtered.task_id = "noop-p0-r3-t0";
  filtered.owner = "p0";
  filtered.status = TaskStatus::kFiltered;
  filtered.reason = "low_confidence";
  filtered.input.ref = ObjectRef{"node-b", 9, 2048, 0x1};
  Write(dir, "task_filtered_ref", EncodeTask(filtered));
  Write(dir, "task_full", EncodeTask(FullTask()));

  auto control = [&](const std::string& name, ControlBody body) {
    Write(dir, "control_" + name, EncodeControl(Control{"worker-1", std::move(body)}));
  };
  control("register", RegisterMsg{"worker-1", {{"teacher", 64}, {"sink:p0", 8}}, 0xabc});
  control("register_ack", RegisterAckMsg{"broker-0", 1000});
  control("heartbeat", HeartbeatMsg{});
  control("deliver", DeliverMsg{{{1, "teacher", 1, 100}, {2, "student", 3, 200}}});
  control("submit", SubmitMsg{{{1, "student", "t1", false, true}, {2, "", "", true, false}}});
  control("stats_request", StatsRequestMsg{});
  control("stats_reply", StatsReplyMsg{R"({"queues": {"teacher": 3}})"});
  control("put", PutMsg{7, {{1, 100, 0x10, 0, true, ""}, {2, 200, 0x20, 60000, true, ""}}});
  control("put_reply", PutReplyMsg{7, {{1, 100, 0x10, 0, true, ""}, {2, 0, 0, 0, false, "full"}}});
  control("get", GetMsg{8, {1, 2, 3}});
  control("get_reply", GetReplyMsg{8, {{1, 100, 0x10, 0, true, ""}, {3, 0, 0, 0, false, "not found"}}});
  control("free", FreeMsg{{1, 2}});
  return 0;
}
