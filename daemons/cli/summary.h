// Run summaries computed from the output records, and the live progress view
// aggregated from the workers' progress files.
#pragma once

#include <string>
#include <vector>

#include "common/base/json.h"
#include "common/base/status.h"

namespace matrix::cli {

// Reads every `*.jsonl` in output_dir and summarises: records, duplicates,
// counts by status and reason, the rate of every boolean variable
// (agreement, correct, ...), the mean of numeric ones, tokens, turns.
StatusOr<Json> SummarizeOutput(const std::string& output_dir);

// Sums the progress files under <run_dir>/progress and, for a job on many
// nodes, <run_dir>/nodes/*/progress.
struct Progress {
  int64_t total = 0;        // tasks in all partitions
  int64_t written = 0;      // records present (this run + earlier runs)
  int64_t preexisting = 0;  // records present before this run
  int64_t failed = 0;       // failed + lost written by this run
  int64_t in_flight = 0;
  int64_t tokens = 0;       // prompt + completion tokens this run
  int64_t completion_tokens = 0;
  int64_t llm_calls = 0, llm_errors = 0;
  int partitions = 0, partitions_finished = 0;
  Json roles_in_flight = Json::object();
};
// With `job`, only files written by that job's workers (their "job" field)
// count: a run directory reused by a later job keeps the earlier files.
Progress ReadProgress(const std::string& run_dir, const std::string& job = "");
// Every worker's progress file, as written (each with "node" added when it
// comes from a node's directory).
std::vector<Json> ReadWorkerProgress(const std::string& run_dir);
// The progress files of a run directory, every node's included.
std::vector<std::string> ProgressFiles(const std::string& run_dir);
// Node names under <run_dir>/nodes, sorted.
std::vector<std::string> RunNodes(const std::string& run_dir);

// One line: "1234/2000 tasks 61.7% | failed 3 | 4,512 tok/s | LLM errors 0.1% | ETA 0:42".
std::string FormatProgress(const Progress& p, double elapsed_s, double tokens_per_s, double tasks_per_s);
std::string FormatDuration(double seconds);

}  // namespace matrix::cli
