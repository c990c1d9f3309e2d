// Wire codecs: the only code that touches FlatBuffers. Encode / verify-then-
// decode pairs over the plain structs of task.h and control.h. Every decode
// verifies the buffer (FlatBuffers Verifier, depth/table limits) and its size
// before reading a field; a failure is kInvalidArgument with a short reason.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/status.h"
#include "common/wire/control.h"
#include "common/wire/task.h"

namespace matrix::wire {

constexpr size_t kDefaultMaxMessageBytes = 64 << 20;

std::string EncodeTask(const Task& task);
StatusOr<Task> DecodeTask(std::string_view bytes, size_t max_bytes = kDefaultMaxMessageBytes);
// Verification alone (brokers forward tasks without decoding them).
Status VerifyTask(std::string_view bytes, size_t max_bytes = kDefaultMaxMessageBytes);

// The few fields a router needs, read after verification without a full decode.
struct TaskHeader {
  std::string task_id;
  std::string owner;
  uint64_t pipeline_hash = 0;
};
StatusOr<TaskHeader> PeekTask(std::string_view bytes, size_t max_bytes = kDefaultMaxMessageBytes);

std::string EncodeControl(const Control& control);
StatusOr<Control> DecodeControl(std::string_view bytes, size_t max_bytes = 1 << 20);

}  // namespace matrix::wire
