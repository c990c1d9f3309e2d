// Views of a Task as JSON: the evaluation context that conditions and prompt
// templates see, and the output record the sink writes. Content held in the
// object store is looked up in `Resolved` (object id -> text), fetched by the
// worker beforehand.
//
// Context layout (what pipeline expressions can read):
//   input         the dataset row
//   vars          named variables (extracted answers, scores, flags)
//   counters      turns, steps, llm_calls, <step name>...
//   task          {id, row, trial, attempt, partition, branch: {index, count,
//                 parent} in a fan-out branch}
//   branches      after a fan-out: vars.branches, every branch's outcome
//   history       every turn: {step, role, kind, content, conversation, finish_reason}
//   conversation  the turns with conversation == true
//   last          the last conversation turn (null before the first)
//   last_turn     the last turn of any kind
//   step          the step being run
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/json.h"
#include "common/wire/task.h"

namespace matrix::worker {

using Resolved = std::unordered_map<uint64_t, std::string>;

// The text of a content (inline or resolved); `missing` set when a reference
// was not resolved.
std::string ContentText(const wire::Content& content, const Resolved& resolved, bool* missing = nullptr);
// The same without a copy: null when the content's object is not resolved.
const std::string* ContentOf(const wire::Content& content, const Resolved& resolved);

// Every object reference the task holds (input and turns).
std::vector<wire::ObjectRef> CollectRefs(const wire::Task& task);

// Parts of the context; building only what an expression reads keeps routing
// cheap (parsing the input row or the history is the costly part).
enum ContextPart : unsigned {
  kCtxInput = 1,
  kCtxVars = 2,
  kCtxCounters = 4,
  kCtxHistory = 8,  // history, conversation: every turn
  kCtxTask = 16,    // task, step
  kCtxLast = 32,      // last: the newest conversation turn
  kCtxLastTurn = 64,  // last_turn: the newest turn
  kCtxAll = 127,
  // Not a context entry: the agent reads every turn from the task itself
  // (an llm role's conversation), so the archived history is loaded.
  kCtxTurns = 128,
};
// Parts that read turns: the task's view holds its archived history when
// one of them needed it (ReadsArchive).
constexpr unsigned kCtxTurnParts = kCtxHistory | kCtxLast | kCtxLastTurn | kCtxTurns;
// Parts whose values live in the store (input and turn contents): a step
// that reads one fetches first.
constexpr unsigned kCtxStored = kCtxInput | kCtxTurnParts;
// The parts an expression's source text may read (by its identifiers).
unsigned ContextPartsFor(const std::string& expression_text);
// Whether reading `parts` of `task` needs its archived history: every turn
// is read, or last / last_turn are not among the turns the task carries.
bool ReadsArchive(const wire::Task& task, unsigned parts);

Json BuildContext(const wire::Task& task, const Resolved& resolved, unsigned parts = kCtxAll);

// The output record: identity, status and reason, input, vars, counters, every
// turn with usage and timing, spans, and totals.
Json BuildRecord(const wire::Task& task, const Resolved& resolved, int64_t finished_us);
// The same record as one JSON line (no trailing newline), written without
// building a document for the parts that dominate its cost: the spans (one
// per step) and an input that is already one line of valid JSON (embedded
// as it is). Parses to the same value as BuildRecord.
std::string RecordLine(const wire::Task& task, const Resolved& resolved, int64_t finished_us);

// The short line of a task that did not end done, for run.records: done:
// identity, status, reason, error, vars, counters and token usage; no input,
// turns or spans.
std::string DroppedRecordLine(const wire::Task& task, int64_t finished_us);

// Reads vars as JSON values (stored as JSON text).
Json VarValue(const wire::Task& task, const std::string& name);
void SetVar(wire::Task& task, const std::string& name, const Json& value);

}  // namespace matrix::worker
