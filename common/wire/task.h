// The orchestrator message as a plain C++ struct (see schemas/orchestrator.fbs
// for the protocol). Workers decode a Task, run one step on it, and encode the
// successor. Value type; no shared state.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace matrix::wire {

enum class TaskStatus { kRunning = 0, kDone = 1, kFiltered = 2, kFailed = 3, kLost = 4 };
const char* TaskStatusName(TaskStatus s);  // "running", "done", ...

struct ObjectRef {
  std::string node;
  uint64_t id = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;
};

// Text inline, or a reference into an object store (then `text` is empty
// until resolved by the reader).
struct Content {
  std::string text;
  std::optional<ObjectRef> ref;
};

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;
};

struct Turn {
  std::string step;
  std::string role;
  std::string kind;
  bool conversation = true;
  Content content;
  std::vector<ToolCall> tool_calls;
  std::string tool_call_id;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string finish_reason;
  std::string endpoint;
  std::string model;
  int64_t start_us = 0;
  int64_t end_us = 0;
  int32_t attempts = 0;
  std::string extra;  // JSON
};

struct Span {
  std::string step;
  std::string role;
  std::string worker;
  int64_t enqueue_us = 0;
  int64_t start_us = 0;
  int64_t end_us = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string endpoint;
  int32_t attempt = 0;
};

struct ResourceLease {
  std::string kind;
  std::string id;
  std::string holder;
  int64_t expires_us = 0;
};

struct BranchInfo {
  std::string parent_task_id;
  uint32_t index = 0;
  uint32_t count = 0;
  std::string join_step;
  std::string join_key;  // the parent's wait at its owner: "<parent>@<attempt>#<round>"
};

struct Task {
  uint16_t version = 2;  // 2: spans as span_names + span_records
  std::string run_id;
  std::string task_id;
  uint32_t partition = 0;
  uint64_t row = 0;
  uint32_t trial = 0;
  uint64_t seed = 0;
  uint32_t attempt = 0;
  std::string owner;
  std::string pipeline;
  uint64_t pipeline_hash = 0;
  std::string step;
  TaskStatus status = TaskStatus::kRunning;
  std::string reason;
  std::string error;
  std::map<std::string, int64_t> counters;
  std::map<std::string, std::string> vars;  // name -> JSON text
  Content input;                             // JSON text of the row
  std::vector<Turn> history;
  std::vector<ResourceLease> leases;
  std::vector<Span> spans;
  std::optional<BranchInfo> branch;
  int64_t created_us = 0;
  int64_t enqueue_us = 0;
  uint32_t hops = 0;
  // The newest segment of older history and spans held by the object store
  // (a segment lists every older one in its own `archive`).
  std::vector<ObjectRef> archive;
};

}  // namespace matrix::wire
