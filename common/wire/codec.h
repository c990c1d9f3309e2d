// Wire codecs: the only code that touches FlatBuffers. Encode / verify-then-
// decode pairs over the plain structs of task.h and control.h. Every decode
// verifies the buffer (FlatBuffers Verifier, depth/table limits) and its size
// before reading a field; a failure is kInvalidArgument with a short reason.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"
#include "common/wire/control.h"
#include "common/wire/task.h"

namespace matrix::wire {

constexpr size_t kDefaultMaxMessageBytes = 64 << 20;

std::string EncodeTask(const Task& task);
// Encodes `task` straight into a payload bundle (see PackPayloads); returns
// the task's encoded size.
size_t AppendPackedTask(const Task& task, std::string* bundle);
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

// Task payloads of one control message travel packed in a single frame after
// the envelope, each as [uint32 little-endian length][bytes]: ZeroMQ's cost
// is per frame, so a batch of 256 tasks costs one frame, not 256. No frame
// when there are no payloads.
std::string PackPayloads(const std::vector<std::string>& payloads);
// Appends one payload to a bundle.
void AppendPacked(std::string_view payload, std::string* bundle);
// Unpacks frames[first..] into exactly `expected` payloads (each at most
// max_item_bytes); kInvalidArgument on any mismatch or truncation.
StatusOr<std::vector<std::string>> UnpackPayloads(const std::vector<std::string>& frames, size_t first,
                                                  size_t expected, size_t max_item_bytes = kDefaultMaxMessageBytes);
// The same without copies: views into frames[first], valid while it lives.
StatusOr<std::vector<std::string_view>> UnpackPayloadViews(const std::vector<std::string>& frames, size_t first,
                                                           size_t expected,
                                                           size_t max_item_bytes = kDefaultMaxMessageBytes);

}  // namespace matrix::wire
