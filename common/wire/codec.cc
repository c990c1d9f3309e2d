#include "common/wire/codec.h"

#include <flatbuffers/flatbuffers.h>

#include <cstring>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/base/utf8.h"
#include "schemas/control_generated.h"
#include "schemas/orchestrator_generated.h"

namespace matrix::wire {
namespace fbs = matrix::wire::fb;
using flatbuffers::FlatBufferBuilder;
using flatbuffers::Offset;

namespace {

constexpr int kMaxDepth = 32;
constexpr int kMaxTables = 1'000'000;

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

Offset<flatbuffers::String> OptStr(FlatBufferBuilder& b, const std::string& s) {
  return s.empty() ? 0 : b.CreateString(s);
}

// The distinct names of one message being encoded (views into the Task), in
// order of first use, each with its index: spans refer to names by index,
// turns share one string per name (SharedStrings).
class NameTable {
 public:
  // `hint` is the index the same field had last time: consecutive spans and
  // turns mostly repeat their worker, endpoint and alternating steps.
  uint32_t Index(const std::string& s, uint32_t* hint) {
    if (*hint < names_.size() && names_[*hint] == s) return *hint;
    return *hint = Lookup(s);
  }
  const std::vector<std::string_view>& names() const { return names_; }

 private:
  uint32_t Lookup(const std::string& s) {
    if (names_.size() <= kLinear) {
      for (uint32_t i = 0; i < names_.size(); ++i)
        if (names_[i] == s) return i;
      if (names_.size() == kLinear)
        for (uint32_t i = 0; i < names_.size(); ++i) index_.emplace(names_[i], i);
    } else if (auto it = index_.find(s); it != index_.end()) {
      return it->second;
    }
    const auto i = static_cast<uint32_t>(names_.size());
    names_.push_back(s);
    if (!index_.empty() || names_.size() > kLinear) index_.emplace(s, i);
    return i;
  }

  static constexpr size_t kLinear = 16;
  std::vector<std::string_view> names_;
  std::unordered_map<std::string_view, uint32_t> index_;
};

// Names that repeat across turns (step, role, kind, endpoint, model) are
// stored once per message: a string per distinct name of the NameTable.
// (Cheaper than FlatBuffers' CreateSharedString, a std::set over the buffer.)
class SharedStrings {
 public:
  explicit SharedStrings(FlatBufferBuilder& b) : b_(b) {}
  Offset<flatbuffers::String> operator()(const std::string& s) {
    if (s.empty()) return 0;
    const uint32_t i = names_.Index(s, &hint_);
    if (i == offsets_.size()) offsets_.push_back(b_.CreateString(s));
    return offsets_[i];
  }

 private:
  FlatBufferBuilder& b_;
  NameTable names_;
  uint32_t hint_ = 0;
  std::vector<Offset<flatbuffers::String>> offsets_;
};

Offset<fbs::Content> EncodeContent(FlatBufferBuilder& b, const Content& c) {
  Offset<fbs::ObjectRef> ref = 0;
  if (c.ref) {
    ref = fbs::CreateObjectRef(b, OptStr(b, c.ref->node), c.ref->id, c.ref->size, c.ref->checksum);
  }
  auto text = c.ref ? 0 : b.CreateString(c.text);
  return fbs::CreateContent(b, text, ref);
}

Content DecodeContent(const fbs::Content* c) {
  Content out;
  if (!c) return out;
  if (c->ref()) {
    out.ref = ObjectRef{Str(c->ref()->node()), c->ref()->id(), c->ref()->size(), c->ref()->checksum()};
  } else {
    out.text = Str(c->text());
  }
  return out;
}

Status CheckSize(std::string_view bytes, size_t max_bytes, const char* what) {
  if (bytes.size() > max_bytes)
    return InvalidArgument(std::string(what) + " of " + std::to_string(bytes.size()) +
                           " bytes exceeds the limit of " + std::to_string(max_bytes));
  if (bytes.size() < 8) return InvalidArgument(std::string(what) + " too short");
  return Status::Ok();
}

}  // namespace

const char* TaskStatusName(TaskStatus s) {
  switch (s) {
    case TaskStatus::kRunning: return "running";
    case TaskStatus::kDone: return "done";
    case TaskStatus::kFiltered: return "filtered";
    case TaskStatus::kFailed: return "failed";
    case TaskStatus::kLost: return "lost";
  }
  return "unknown";
}

namespace {
// One builder per thread, reused: its buffer stays allocated between calls.
FlatBufferBuilder& BuildTask(const Task& t);
}  // namespace

std::string EncodeTask(const Task& t) {
  FlatBufferBuilder& b = BuildTask(t);
  return std::string(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
}

size_t AppendPackedTask(const Task& t, std::string* bundle) {
  FlatBufferBuilder& b = BuildTask(t);
  AppendPacked(std::string_view(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize()), bundle);
  return b.GetSize();
}

namespace {
FlatBufferBuilder& BuildTask(const Task& t) {
  static thread_local FlatBufferBuilder b(8192);
  b.Clear();
  SharedStrings shared(b);
  // std::map iterates in the byte order FlatBuffers requires of a keyed
  // vector, so counters and vars need no sort.
  std::vector<Offset<fbs::Counter>> counters;
  counters.reserve(t.counters.size());
  for (const auto& [k, v] : t.counters) counters.push_back(fbs::CreateCounter(b, b.CreateString(k), v));
  std::vector<Offset<fbs::Variable>> vars;
  vars.reserve(t.vars.size());
  for (const auto& [k, v] : t.vars)
    vars.push_back(fbs::CreateVariable(b, b.CreateString(k), b.CreateString(v)));
  auto input = EncodeContent(b, t.input);
  std::vector<Offset<fbs::Turn>> history;
  history.reserve(t.history.size());
  for (const Turn& turn : t.history) {
    std::vector<Offset<fbs::ToolCall>> calls;
    for (const ToolCall& c : turn.tool_calls)
      calls.push_back(fbs::CreateToolCall(b, OptStr(b, c.id), OptStr(b, c.name), OptStr(b, c.arguments)));
    auto content = EncodeContent(b, turn.content);
    auto calls_vec = calls.empty() ? 0 : b.CreateVector(calls);
    history.push_back(fbs::CreateTurn(
        b, shared(turn.step), shared(turn.role), shared(turn.kind), turn.conversation, content, calls_vec,
        OptStr(b, turn.tool_call_id), turn.prompt_tokens, turn.completion_tokens, shared(turn.finish_reason),
        shared(turn.endpoint), shared(turn.model), turn.start_us,
        turn.end_us, turn.attempts, OptStr(b, turn.extra)));
  }
  std::vector<Offset<fbs::ResourceLease>> leases;
  for (const ResourceLease& l : t.leases)
    leases.push_back(fbs::CreateResourceLease(b, OptStr(b, l.kind), OptStr(b, l.id), OptStr(b, l.holder),
                                              l.expires_us));
  Offset<flatbuffers::Vector<Offset<flatbuffers::String>>> span_names = 0;
  Offset<flatbuffers::Vector<const fbs::SpanRecord*>> span_records = 0;
  if (!t.spans.empty()) {
    NameTable names;
    uint32_t step = 0, role = 0, worker = 0, endpoint = 0;
    std::vector<fbs::SpanRecord> records;
    records.reserve(t.spans.size());
    for (const Span& s : t.spans)
      records.emplace_back(s.enqueue_us, s.start_us, s.end_us, s.prompt_tokens, s.completion_tokens, s.attempt,
                           names.Index(s.step, &step), names.Index(s.role, &role),
                           names.Index(s.worker, &worker), names.Index(s.endpoint, &endpoint));
    std::vector<Offset<flatbuffers::String>> name_offsets;
    name_offsets.reserve(names.names().size());
    for (std::string_view n : names.names()) name_offsets.push_back(b.CreateString(n));
    span_names = b.CreateVector(name_offsets);
    span_records = b.CreateVectorOfStructs(records);
  }
  Offset<fbs::Branch> branch = 0;
  if (t.branch)
    branch = fbs::CreateBranch(b, OptStr(b, t.branch->parent_task_id), t.branch->index,
                               t.branch->count, OptStr(b, t.branch->join_step), OptStr(b, t.branch->join_key));
  std::vector<Offset<fbs::ObjectRef>> archive;
  for (const ObjectRef& r : t.archive)
    archive.push_back(fbs::CreateObjectRef(b, OptStr(b, r.node), r.id, r.size, r.checksum));
  auto root = fbs::CreateTask(
      b, t.version, OptStr(b, t.run_id), b.CreateString(t.task_id), t.partition, t.row, t.trial, t.seed,
      t.attempt, OptStr(b, t.owner), OptStr(b, t.pipeline), t.pipeline_hash, OptStr(b, t.step),
      static_cast<fbs::TaskStatus>(t.status), OptStr(b, t.reason), OptStr(b, t.error),
      counters.empty() ? 0 : b.CreateVector(counters), vars.empty() ? 0 : b.CreateVector(vars), input,
      history.empty() ? 0 : b.CreateVector(history), leases.empty() ? 0 : b.CreateVector(leases),
      branch, t.created_us, t.enqueue_us, t.hops, archive.empty() ? 0 : b.CreateVector(archive), span_names,
      span_records);
  b.Finish(root);
  return b;
}
}  // namespace

Status VerifyTask(std::string_view bytes, size_t max_bytes) {
  MATRIX_RETURN_IF_ERROR(CheckSize(bytes, max_bytes, "task message"));
  flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), kMaxDepth,
                          kMaxTables);
  if (!fbs::VerifyTaskBuffer(v)) return InvalidArgument("task message failed verification");
  auto* t = fbs::GetTask(bytes.data());
  if (!t->task_id() || t->task_id()->size() == 0) return InvalidArgument("task message has no task_id");
  return Status::Ok();
}

StatusOr<TaskHeader> PeekTask(std::string_view bytes, size_t max_bytes) {
  MATRIX_RETURN_IF_ERROR(VerifyTask(bytes, max_bytes));
  auto* t = fbs::GetTask(bytes.data());
  TaskHeader h{Str(t->task_id()), Str(t->owner()), t->pipeline_hash()};
  if (!IsValidUtf8(h.task_id) || !IsValidUtf8(h.owner)) return InvalidArgument("task message names are not valid UTF-8");
  return h;
}

StatusOr<Task> DecodeTask(std::string_view bytes, size_t max_bytes) {
  MATRIX_RETURN_IF_ERROR(VerifyTask(bytes, max_bytes));
  auto* f = fbs::GetTask(bytes.data());
  Task t;
  t.version = f->version();
  t.run_id = Str(f->run_id());
  t.task_id = Str(f->task_id());
  t.partition = f->partition();
  t.row = f->row();
  t.trial = f->trial();
  t.seed = f->seed();
  t.attempt = f->attempt();
  t.owner = Str(f->owner());
  t.pipeline = Str(f->pipeline());
  t.pipeline_hash = f->pipeline_hash();
  t.step = Str(f->step());
  // Names reach logs, records and routing keys: each must be UTF-8.
  for (const std::string* name : {&t.run_id, &t.task_id, &t.owner, &t.pipeline, &t.step})
    if (!IsValidUtf8(*name)) return InvalidArgument("task message names are not valid UTF-8");
  int status = static_cast<int>(f->status());
  if (status < 0 || status > 4) return InvalidArgument("task message has an unknown status");
  t.status = static_cast<TaskStatus>(status);
  t.reason = Str(f->reason());
  t.error = Str(f->error());
  if (f->counters())
    for (auto* c : *f->counters()) t.counters[Str(c->key())] = c->value();
  if (f->vars())
    for (auto* v : *f->vars()) t.vars[Str(v->key())] = Str(v->json());
  t.input = DecodeContent(f->input());
  if (f->history()) {
    t.history.reserve(f->history()->size());
    for (auto* h : *f->history()) {
      Turn turn;
      turn.step = Str(h->step());
      turn.role = Str(h->role());
      turn.kind = Str(h->kind());
      turn.conversation = h->conversation();
      turn.content = DecodeContent(h->content());
      if (h->tool_calls())
        for (auto* c : *h->tool_calls())
          turn.tool_calls.push_back({Str(c->id()), Str(c->name()), Str(c->arguments())});
      turn.tool_call_id = Str(h->tool_call_id());
      turn.prompt_tokens = h->prompt_tokens();
      turn.completion_tokens = h->completion_tokens();
      turn.finish_reason = Str(h->finish_reason());
      turn.endpoint = Str(h->endpoint());
      turn.model = Str(h->model());
      turn.start_us = h->start_us();
      turn.end_us = h->end_us();
      turn.attempts = h->attempts();
      turn.extra = Str(h->extra());
      t.history.push_back(std::move(turn));
    }
  }
  if (f->leases())
    for (auto* l : *f->leases())
      t.leases.push_back({Str(l->kind()), Str(l->id()), Str(l->holder()), l->expires_us()});
  if (f->span_records()) {
    std::vector<std::string> names;
    if (f->span_names()) {
      names.reserve(f->span_names()->size());
      for (auto* n : *f->span_names()) names.push_back(Str(n));
    }
    // Copied out bytewise: the Verifier checks the vector's alignment only to
    // 4 bytes, and the records hold 8-byte fields (see DecodeUlongs).
    const size_t count = f->span_records()->size();
    const uint8_t* data = f->span_records()->Data();
    t.spans.reserve(count + 1);  // room for the span the receiving step appends
    for (size_t i = 0; i < count; ++i) {
      fbs::SpanRecord s;
      std::memcpy(&s, data + i * sizeof(s), sizeof(s));
      for (uint32_t index : {s.step(), s.role(), s.worker(), s.endpoint()}) {
        if (index >= names.size())
          return InvalidArgument("task message has a span name index " + std::to_string(index) +
                                 " beyond its " + std::to_string(names.size()) + " span names");
      }
      Span& span = t.spans.emplace_back();
      span.step = names[s.step()];
      span.role = names[s.role()];
      span.worker = names[s.worker()];
      span.endpoint = names[s.endpoint()];
      span.enqueue_us = s.enqueue_us();
      span.start_us = s.start_us();
      span.end_us = s.end_us();
      span.prompt_tokens = s.prompt_tokens();
      span.completion_tokens = s.completion_tokens();
      span.attempt = s.attempt();
    }
  }
  if (f->branch())
    t.branch = BranchInfo{Str(f->branch()->parent_task_id()), f->branch()->index(), f->branch()->count(),
                          Str(f->branch()->join_step()), Str(f->branch()->join_key())};
  t.created_us = f->created_us();
  t.enqueue_us = f->enqueue_us();
  t.hops = f->hops();
  if (f->archive()) {
    t.archive.reserve(f->archive()->size() + 1);
    for (auto* r : *f->archive()) t.archive.push_back({Str(r->node()), r->id(), r->size(), r->checksum()});
  }
  return t;
}

namespace {

Offset<flatbuffers::Vector<Offset<fbs::ObjectItem>>> EncodeObjectItems(
    FlatBufferBuilder& b, const std::vector<ObjectItem>& items) {
  std::vector<Offset<fbs::ObjectItem>> out;
  out.reserve(items.size());
  for (const auto& i : items)
    out.push_back(fbs::CreateObjectItem(b, i.id, i.size, i.checksum, i.ttl_ms, i.ok, OptStr(b, i.error)));
  return b.CreateVector(out);
}

std::vector<ObjectItem> DecodeObjectItems(const flatbuffers::Vector<Offset<fbs::ObjectItem>>* items) {
  std::vector<ObjectItem> out;
  if (!items) return out;
  out.reserve(items->size());
  for (auto* i : *items)
    out.push_back({i->id(), i->size(), i->checksum(), i->ttl_ms(), i->ok(), Str(i->error())});
  return out;
}

// The Verifier checks only the 4-byte length field of a vector for alignment,
// so the elements of a verified [ulong] may sit at 4 mod 8: copy them out
// bytewise instead of through the vector's typed accessors.
std::vector<uint64_t> DecodeUlongs(const flatbuffers::Vector<uint64_t>* v) {
  std::vector<uint64_t> out;
  if (!v) return out;
  out.resize(v->size());
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t x;
    std::memcpy(&x, v->Data() + i * sizeof(uint64_t), sizeof(x));
    out[i] = flatbuffers::EndianScalar(x);
  }
  return out;
}

struct BodyEncoder {
  FlatBufferBuilder& b;
  std::pair<fbs::Body, Offset<void>> operator()(const RegisterMsg& m) {
    std::vector<Offset<fbs::RoleCredit>> roles;
    for (const auto& [role, credit] : m.roles)
      roles.push_back(fbs::CreateRoleCredit(b, b.CreateString(role), credit));
    return {fbs::Body::Register,
            fbs::CreateRegister(b, b.CreateString(m.worker_id), b.CreateVector(roles), m.pipeline_hash,
                                m.peer, m.node.empty() ? 0 : b.CreateString(m.node), m.load)
                .Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const RegisterAckMsg& m) {
    return {fbs::Body::RegisterAck,
            fbs::CreateRegisterAck(b, b.CreateString(m.broker_id), m.heartbeat_ms).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const HeartbeatMsg& m) {
    return {fbs::Body::Heartbeat, fbs::CreateHeartbeat(b, m.load).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const DeliverMsg& m) {
    std::vector<Offset<fbs::DeliverItem>> items;
    items.reserve(m.items.size());
    for (const auto& i : m.items)
      items.push_back(fbs::CreateDeliverItem(b, i.lease, b.CreateString(i.role), i.deliveries, i.enqueue_us));
    return {fbs::Body::Deliver, fbs::CreateDeliver(b, b.CreateVector(items)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const SubmitMsg& m) {
    std::vector<Offset<fbs::SubmitItem>> items;
    items.reserve(m.items.size());
    for (const auto& i : m.items)
      items.push_back(fbs::CreateSubmitItem(b, i.ack_lease, OptStr(b, i.role), OptStr(b, i.task_id),
                                            i.requeue, i.has_payload));
    return {fbs::Body::Submit, fbs::CreateSubmit(b, b.CreateVector(items)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const StatsRequestMsg&) {
    return {fbs::Body::StatsRequest, fbs::CreateStatsRequest(b).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const StatsReplyMsg& m) {
    return {fbs::Body::StatsReply, fbs::CreateStatsReply(b, b.CreateString(m.json)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const PutMsg& m) {
    return {fbs::Body::Put, fbs::CreatePut(b, m.request_id, EncodeObjectItems(b, m.items)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const PutReplyMsg& m) {
    return {fbs::Body::PutReply, fbs::CreatePutReply(b, m.request_id, EncodeObjectItems(b, m.items)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const GetMsg& m) {
    return {fbs::Body::Get, fbs::CreateGet(b, m.request_id, b.CreateVector(m.ids)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const GetReplyMsg& m) {
    return {fbs::Body::GetReply, fbs::CreateGetReply(b, m.request_id, EncodeObjectItems(b, m.items)).Union()};
  }
  std::pair<fbs::Body, Offset<void>> operator()(const FreeMsg& m) {
    return {fbs::Body::Free, fbs::CreateFree(b, b.CreateVector(m.ids)).Union()};
  }
};

}  // namespace

std::string EncodeControl(const Control& control) {
  FlatBufferBuilder b(256);
  auto [type, body] = std::visit(BodyEncoder{b}, control.body);
  auto root = fbs::CreateEnvelope(b, 1, OptStr(b, control.sender), type, body);
  b.Finish(root);
  return std::string(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
}

StatusOr<Control> DecodeControl(std::string_view bytes, size_t max_bytes) {
  MATRIX_RETURN_IF_ERROR(CheckSize(bytes, max_bytes, "control message"));
  flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), kMaxDepth,
                          kMaxTables);
  if (!fbs::VerifyEnvelopeBuffer(v)) return InvalidArgument("control message failed verification");
  auto* e = fbs::GetEnvelope(bytes.data());
  if (e->version() != 1)
    return InvalidArgument("control message has protocol version " + std::to_string(e->version()));
  // The Verifier accepts a union whose type is set but whose table is absent;
  // every body is read through its table below, so refuse that here.
  if (e->body() == nullptr) return InvalidArgument("control message has no body");
  Control c;
  // Names (peers, roles, tasks) reach logs, JSON and metrics labels: each must be UTF-8.
  const char* not_utf8 = nullptr;
  auto Name = [&not_utf8](const flatbuffers::String* s, const char* field) {
    std::string out = Str(s);
    if (!not_utf8 && !IsValidUtf8(out)) not_utf8 = field;
    return out;
  };
  c.sender = Name(e->sender(), "sender");
  switch (e->body_type()) {
    case fbs::Body::Register: {
      auto* m = e->body_as_Register();
      RegisterMsg r{Name(m->worker_id(), "worker_id"), {}, m->pipeline_hash(), m->peer(), Name(m->node(), "node"), m->load()};
      if (m->roles())
        for (auto* rc : *m->roles()) r.roles.emplace_back(Name(rc->role(), "role"), rc->credit());
      c.body = std::move(r);
      break;
    }
    case fbs::Body::RegisterAck: {
      auto* m = e->body_as_RegisterAck();
      c.body = RegisterAckMsg{Name(m->broker_id(), "broker_id"), m->heartbeat_ms()};
      break;
    }
    case fbs::Body::Heartbeat: c.body = HeartbeatMsg{e->body_as_Heartbeat()->load()}; break;
    case fbs::Body::Deliver: {
      DeliverMsg d;
      if (auto* items = e->body_as_Deliver()->items()) {
        d.items.reserve(items->size());
        for (auto* i : *items) d.items.push_back({i->lease(), Name(i->role(), "role"), i->deliveries(), i->enqueue_us()});
      }
      c.body = std::move(d);
      break;
    }
    case fbs::Body::Submit: {
      SubmitMsg s;
      if (auto* items = e->body_as_Submit()->items()) {
        s.items.reserve(items->size());
        for (auto* i : *items)
          s.items.push_back({i->ack_lease(), Name(i->role(), "role"), Name(i->task_id(), "task_id"), i->requeue(), i->has_payload()});
      }
      c.body = std::move(s);
      break;
    }
    case fbs::Body::StatsRequest: c.body = StatsRequestMsg{}; break;
    case fbs::Body::StatsReply: c.body = StatsReplyMsg{Name(e->body_as_StatsReply()->json(), "json")}; break;
    case fbs::Body::Put: {
      auto* m = e->body_as_Put();
      c.body = PutMsg{m->request_id(), DecodeObjectItems(m->items())};
      break;
    }
    case fbs::Body::PutReply: {
      auto* m = e->body_as_PutReply();
      c.body = PutReplyMsg{m->request_id(), DecodeObjectItems(m->items())};
      break;
    }
    case fbs::Body::Get: {
      auto* m = e->body_as_Get();
      c.body = GetMsg{m->request_id(), DecodeUlongs(m->ids())};
      break;
    }
    case fbs::Body::GetReply: {
      auto* m = e->body_as_GetReply();
      c.body = GetReplyMsg{m->request_id(), DecodeObjectItems(m->items())};
      break;
    }
    case fbs::Body::Free: {
      c.body = FreeMsg{DecodeUlongs(e->body_as_Free()->ids())};
      break;
    }
    default: return InvalidArgument("control message has no known body");
  }
  if (not_utf8) return InvalidArgument(std::string("control message field '") + not_utf8 + "' is not valid UTF-8");
  return c;
}

void AppendPacked(std::string_view payload, std::string* bundle) {
  const uint32_t n = static_cast<uint32_t>(payload.size());
  const char len[4] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                       static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  bundle->append(len, 4);
  bundle->append(payload);
}

std::string PackPayloads(const std::vector<std::string>& payloads) {
  size_t total = 0;
  for (const auto& p : payloads) total += 4 + p.size();
  std::string out;
  out.reserve(total);
  for (const auto& p : payloads) AppendPacked(p, &out);
  return out;
}

StatusOr<std::vector<std::string>> UnpackPayloads(const std::vector<std::string>& frames, size_t first,
                                                  size_t expected, size_t max_item_bytes) {
  MATRIX_ASSIGN_OR_RETURN(auto views, UnpackPayloadViews(frames, first, expected, max_item_bytes));
  return std::vector<std::string>(views.begin(), views.end());
}

StatusOr<std::vector<std::string_view>> UnpackPayloadViews(const std::vector<std::string>& frames, size_t first,
                                                           size_t expected, size_t max_item_bytes) {
  std::vector<std::string_view> out;
  if (frames.size() == first) {
    if (expected != 0) return InvalidArgument("missing payload frame for " + std::to_string(expected) + " items");
    return out;
  }
  if (frames.size() != first + 1) return InvalidArgument("more than one payload frame");
  const std::string& bundle = frames[first];
  out.reserve(expected);
  size_t pos = 0;
  while (pos < bundle.size()) {
    if (bundle.size() - pos < 4) return InvalidArgument("truncated payload length");
    const auto* b = reinterpret_cast<const unsigned char*>(bundle.data() + pos);
    const size_t n = static_cast<size_t>(b[0]) | static_cast<size_t>(b[1]) << 8 | static_cast<size_t>(b[2]) << 16 |
                     static_cast<size_t>(b[3]) << 24;
    pos += 4;
    if (n > max_item_bytes) return InvalidArgument("payload of " + std::to_string(n) + " bytes is above the limit");
    if (bundle.size() - pos < n) return InvalidArgument("truncated payload");
    if (out.size() == expected) return InvalidArgument("more payloads than items");
    out.emplace_back(bundle.data() + pos, n);
    pos += n;
  }
  if (out.size() != expected)
    return InvalidArgument(std::to_string(out.size()) + " payloads for " + std::to_string(expected) + " items");
  return out;
}

}  // namespace matrix::wire
