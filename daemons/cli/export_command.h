// `matrix export OUTPUT_DIR --format sft|rl|stats [--out FILE] [--pipeline FILE]`:
// turns the records of a run (<OUTPUT_DIR>/p*.jsonl[.zst]) into training data or a
// latency and token breakdown.
//
//   sft    one JSON line per (task, conversation agent): {"task_id", "agent",
//          "status", "reason", "messages": [...]} in chat format. The agent's
//          own turns are "assistant", the other agents' turns "user", as the
//          agent saw them when it spoke; the conversation opens with the
//          task's prompt (see below). Helper calls (conversation: false) are
//          left out.
//   rl     one JSON line per LLM call: {"task_id", "step", "turn", "role",
//          "model", "prompt": [messages], "response", "finish_reason",
//          "usage", "reward", "status", "reason", "endpoint"} plus "tool_calls"
//          and whatever token-level data (token ids, logprobs) the turn's
//          `extra` carries. `reward` is vars.reward when it is a number or a
//          boolean, else vars.correct as 1 / 0, else null.
//   stats  one JSON document: end-to-end time, the time each role's steps
//          took and waited in queues as a share of end-to-end time, and tokens
//          by role and model.
//
// The opening of a conversation: without --pipeline, one "user" message with
// the task input as text (its question / prompt / text / input field, with
// lettered `options` when the row has them; otherwise the row as JSON). With
// --pipeline (the run's pipeline file, plus its overrides), each role's own
// `system` and `prompt` templates rendered against the record: exact for
// templates that read the input, approximate for ones that read vars or
// counters (the task's final values are used).
// Thread-safety: plain functions, no shared state.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix::cli {

struct ExportOptions {
  std::string output_dir;              // where the run wrote p*.jsonl or p*.jsonl.zst
  std::string format;                  // "sft", "rl" or "stats"
  std::string out_path;                // "" or "-": standard output
  std::string pipeline_path;           // optional; see the file comment
  std::vector<std::string> overrides;  // applied to pipeline_path
};

struct ExportCounts {
  int64_t records = 0;  // records read
  int64_t lines = 0;    // lines written (1 for stats)
  int64_t skipped = 0;  // records without usable turns (failed before any LLM call, ...)
};

// Writes the export to `out`. InvalidArgument for an unknown format,
// NotFound when the directory holds no p*.jsonl[.zst], DataLoss naming the file and
// line of a record that is not JSON, FailedPrecondition when --pipeline does
// not load.
StatusOr<ExportCounts> ExportRun(const ExportOptions& options, std::ostream& out);

// The command: ExportRun to options.out_path (written atomically) or stdout,
// a one-line report on stderr. Returns the exit code (0, 1 on error, 2 on
// bad arguments).
int ExportCommand(const ExportOptions& options);

}  // namespace matrix::cli
