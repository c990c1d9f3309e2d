// Fuzz target for the wire decoders (common/wire/codec.h): every input is fed
// to DecodeTask, VerifyTask, PeekTask, DecodeControl and the payload bundle
// unpacker. Properties checked besides "no crash, no sanitizer report":
//   - the three task entry points agree: a decodable task verifies, and its
//     peeked header equals the decoded fields;
//   - round trip: a decoded task (control message) encodes to bytes that
//     decode to an equal value, and encoding that value again gives the same
//     bytes;
//   - a payload bundle unpacks for at most one item count, and packs back to
//     the same bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/wire/codec.h"
#include "test/fuzz/fuzz_check.h"

namespace {

using namespace matrix::wire;

bool SameRef(const std::optional<ObjectRef>& a, const std::optional<ObjectRef>& b) {
  if (a.has_value() != b.has_value()) return false;
  if (!a) return true;
  return a->node == b->node && a->id == b->id && a->size == b->size && a->checksum == b->checksum;
}

bool SameContent(const Content& a, const Content& b) { return a.text == b.text && SameRef(a.ref, b.ref); }

void CheckTaskEqual(const Task& a, const Task& b) {
  FUZZ_CHECK(a.version == b.version);
  FUZZ_CHECK(a.run_id == b.run_id);
  FUZZ_CHECK(a.task_id == b.task_id);
  FUZZ_CHECK(a.partition == b.partition && a.row == b.row && a.trial == b.trial);
  FUZZ_CHECK(a.seed == b.seed && a.attempt == b.attempt);
  FUZZ_CHECK(a.owner == b.owner && a.pipeline == b.pipeline && a.pipeline_hash == b.pipeline_hash);
  FUZZ_CHECK(a.step == b.step && a.status == b.status);
  FUZZ_CHECK(a.reason == b.reason && a.error == b.error);
  FUZZ_CHECK(a.counters == b.counters);
  FUZZ_CHECK(a.vars == b.vars);
  FUZZ_CHECK(SameContent(a.input, b.input));
  FUZZ_CHECK(a.history.size() == b.history.size());
  for (size_t i = 0; i < a.history.size(); ++i) {
    const Turn& x = a.history[i];
    const Turn& y = b.history[i];
    FUZZ_CHECK(x.step == y.step && x.role == y.role && x.kind == y.kind);
    FUZZ_CHECK(x.conversation == y.conversation);
    FUZZ_CHECK(SameContent(x.content, y.content));
    FUZZ_CHECK(x.tool_calls.size() == y.tool_calls.size());
    for (size_t j = 0; j < x.tool_calls.size(); ++j) {
      FUZZ_CHECK(x.tool_calls[j].id == y.tool_calls[j].id);
      FUZZ_CHECK(x.tool_calls[j].name == y.tool_calls[j].name);
      FUZZ_CHECK(x.tool_calls[j].arguments == y.tool_calls[j].arguments);
    }
    FUZZ_CHECK(x.prompt_tokens == y.prompt_tokens && x.completion_tokens == y.completion_tokens);
    FUZZ_CHECK(x.start_us == y.start_us && x.end_us == y.end_us && x.attempts == y.attempts);
    FUZZ_CHECK(x.extra == y.extra && x.model == y.model && x.finish_reason == y.finish_reason);
  }
  FUZZ_CHECK(a.leases.size() == b.leases.size());
  FUZZ_CHECK(a.spans.size() == b.spans.size());
  for (size_t i = 0; i < a.spans.size(); ++i) {
    FUZZ_CHECK(a.spans[i].worker == b.spans[i].worker);
    FUZZ_CHECK(a.spans[i].end_us == b.spans[i].end_us);
  }
  FUZZ_CHECK(a.branch.has_value() == b.branch.has_value());
  if (a.branch) {
    FUZZ_CHECK(a.branch->parent_task_id == b.branch->parent_task_id);
    FUZZ_CHECK(a.branch->index == b.branch->index && a.branch->count == b.branch->count);
  }
  FUZZ_CHECK(a.created_us == b.created_us && a.enqueue_us == b.enqueue_us && a.hops == b.hops);
  FUZZ_CHECK(a.archive.size() == b.archive.size());
  for (size_t i = 0; i < a.archive.size(); ++i) FUZZ_CHECK(SameRef(a.archive[i], b.archive[i]));
}

void FuzzTask(std::string_view bytes) {
  matrix::Status verified = VerifyTask(bytes);
  auto header = PeekTask(bytes);
  FUZZ_CHECK(header.ok() == verified.ok());
  auto task = DecodeTask(bytes);
  if (!task.ok()) return;
  FUZZ_CHECK(verified.ok());
  FUZZ_CHECK(header->task_id == task->task_id);
  FUZZ_CHECK(header->owner == task->owner);
  FUZZ_CHECK(header->pipeline_hash == task->pipeline_hash);

  std::string encoded = EncodeTask(*task);
  FUZZ_CHECK(VerifyTask(encoded).ok());
  auto again = DecodeTask(encoded);
  FUZZ_CHECK(again.ok());
  CheckTaskEqual(*task, *again);
  FUZZ_CHECK(EncodeTask(*again) == encoded);
}

void FuzzControl(std::string_view bytes) {
  auto control = DecodeControl(bytes);
  if (!control.ok()) return;
  std::string encoded = EncodeControl(*control);
  auto again = DecodeControl(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->sender == control->sender);
  FUZZ_CHECK(again->body.index() == control->body.index());
  FUZZ_CHECK(EncodeControl(*again) == encoded);
}

// A payload bundle: unpacking never reads past the frame, at most one item
// count fits it, and what unpacks packs back to the same bytes.
void FuzzPayloads(std::string_view bytes) {
  const std::vector<std::string> frames = {"envelope", std::string(bytes)};
  int fits = 0;
  for (size_t expected = 0; expected <= 8; ++expected) {
    auto views = UnpackPayloadViews(frames, 1, expected, 1 << 20);
    auto copies = UnpackPayloads(frames, 1, expected, 1 << 20);
    FUZZ_CHECK(views.ok() == copies.ok());
    if (!views.ok()) continue;
    ++fits;
    FUZZ_CHECK(views->size() == expected);
    FUZZ_CHECK(PackPayloads(*copies) == frames[1]);
  }
  FUZZ_CHECK(fits <= 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  FuzzTask(bytes);
  FuzzControl(bytes);
  FuzzPayloads(bytes);
  return 0;
}
