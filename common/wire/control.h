// Control messages (schemas/control.fbs) as plain structs. One Control value
// is one Envelope; payload frames travel next to it, outside the struct.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace matrix::wire {

struct RegisterMsg {
  std::string worker_id;
  std::vector<std::pair<std::string, uint32_t>> roles;  // role -> capacity
  uint64_t pipeline_hash = 0;
  bool peer = false;     // a peer broker's link
  std::string node;
  float load = 0;
};
struct RegisterAckMsg {
  std::string broker_id;
  uint32_t heartbeat_ms = 1000;
};
struct HeartbeatMsg {
  float load = -1;  // peers only
};
struct DeliverItem {
  uint64_t lease = 0;
  std::string role;
  uint32_t deliveries = 1;
  int64_t enqueue_us = 0;
};
struct DeliverMsg {
  std::vector<DeliverItem> items;
};
struct SubmitItem {
  uint64_t ack_lease = 0;
  std::string role;
  std::string task_id;
  bool requeue = false;
  bool has_payload = false;
};
struct SubmitMsg {
  std::vector<SubmitItem> items;
};
struct StatsRequestMsg {};
struct StatsReplyMsg {
  std::string json;
};
struct ObjectItem {
  uint64_t id = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;
  uint64_t ttl_ms = 0;
  bool ok = true;
  std::string error;
};
struct PutMsg {
  uint64_t request_id = 0;
  std::vector<ObjectItem> items;
};
struct PutReplyMsg {
  uint64_t request_id = 0;
  std::vector<ObjectItem> items;
};
struct GetMsg {
  uint64_t request_id = 0;
  std::vector<uint64_t> ids;
};
struct GetReplyMsg {
  uint64_t request_id = 0;
  std::vector<ObjectItem> items;
};
struct FreeMsg {
  std::vector<uint64_t> ids;
};

using ControlBody = std::variant<RegisterMsg, RegisterAckMsg, HeartbeatMsg, DeliverMsg, SubmitMsg,
                                 StatsRequestMsg, StatsReplyMsg, PutMsg, PutReplyMsg, GetMsg,
                                 GetReplyMsg, FreeMsg>;

struct Control {
  std::string sender;
  ControlBody body;
};

}  // namespace matrix::wire
