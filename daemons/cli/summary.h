// Run summaries computed from the output records, and the live progress view
// aggregated from the workers' progress files.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/base/json.h"
#include "common/base/status.h"

namespace matrix::config {
struct Pipeline;
}

namespace matrix::cli {

// Tokens of one model (the pipeline's model name, the key under `models`).
struct ModelTokens {
  int64_t prompt = 0;
  int64_t completion = 0;
};
using TokensByModel = std::map<std::string, ModelTokens>;

// What a model's tokens cost (models.<name>.price); the table holds priced
// models only and is empty when the pipeline sets no price.
struct ModelPrice {
  double input_per_million = 0;
  double output_per_million = 0;
  std::string currency = "USD";
};
using PriceTable = std::map<std::string, ModelPrice>;

PriceTable PricesOf(const config::Pipeline& pipeline);
// The "prices" object of a worker's progress file; malformed entries are left out.
PriceTable PricesFromJson(const Json& prices);

struct Cost {
  std::string currency;
  double total = 0;
  std::map<std::string, double> by_model;  // every priced model, 0 when it has no tokens
};
// Sum over the priced models of (prompt * input_per_million + completion *
// output_per_million) / 1e6; tokens of models without a price are left out.
// nullopt when the table is empty.
std::optional<Cost> CostOf(const TokensByModel& tokens, const PriceTable& prices);

// The projected cost of the run: what was spent so far, plus the tasks still
// to write at the mean cost of the tasks written this run:
//   projected = so_far + so_far / written_this_run * (to_write_this_run - written_this_run)
// where to_write_this_run excludes the records of earlier runs. nullopt until
// at least 1% of this run's tasks (and at least one) are written: before that
// the mean rests on too few tasks. (so_far also holds the tokens of tasks
// still in flight, so early on, with many tasks in flight, the projection
// runs high and comes down as tasks finish.)
std::optional<double> ProjectCost(double so_far, int64_t written_this_run, int64_t to_write_this_run);

// "$1.23" for USD, "1.23 EUR" otherwise; amounts below 1 keep four decimals
// (six below 0.01).
std::string FormatMoney(double amount, const std::string& currency);

// Reads every `*.jsonl` and `*.jsonl.zst` in output_dir and summarises: records, duplicates,
// counts by status and reason, the rate of every boolean variable
// (agreement, correct, ...), the mean of numeric ones, tokens, turns. With
// prices, also "cost" of the records' tokens (the turns' usage by model):
// {"currency", "total", "by_model": {model: {"prompt_tokens",
// "completion_tokens", "input_per_million", "output_per_million", "cost"}}},
// and "unpriced_models" when some model with tokens has no price.
StatusOr<Json> SummarizeOutput(const std::string& output_dir, const PriceTable& prices = {});

// For `matrix run --retry-failed`: rewrites every `*.jsonl` (and
// `*.jsonl.zst`, compressed again) in output_dir without its `failed` and
// `lost` records (each file replaced atomically; the records taken out are
// appended to `<file>.retried`, in the file's format), so the next run admits
// exactly those tasks again. Returns how many records were taken out.
StatusOr<int64_t> DropFailedRecords(const std::string& output_dir);

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
  int64_t llm_attempts = 0;  // HTTP attempts, retries included
  int partitions = 0, partitions_finished = 0;
  Json roles_in_flight = Json::object();
  std::map<std::string, bool> model_up;  // model -> some worker has a healthy endpoint of it
  std::string io_error;   // why some worker's output is blocked ("write .../p0.jsonl: No space left on device")
  double io_error_s = 0;  // for how long (the longest of the workers)
  TokensByModel tokens_by_model;  // this run
  PriceTable prices;              // as the workers' progress files give it
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

// The cost of this run's tokens; nullopt without prices.
std::optional<Cost> CostSoFar(const Progress& p);
// "$1.23 so far, ~$45.60 projected" (ProjectCost; "$0.01 so far" until the
// projection starts); "" without prices.
std::string FormatCost(const Progress& p);

// One line: "1234/2000 tasks 61.7% | failed 3 | 4,512 completion tok/s | LLM errors 0.1%, retries 2.5% | ETA 0:42",
// then " | " and FormatCost() when there are prices.
std::string FormatProgress(const Progress& p, double elapsed_s, double completion_tokens_per_s, double tasks_per_s);
std::string FormatDuration(double seconds);

}  // namespace matrix::cli
