// `matrix run`: the whole system on one machine. Starts matrix-store,
// matrix-broker, N matrix-worker processes (and matrix-llm-sim when a model's
// endpoints say `sim`) as children talking over ipc:// sockets, shows live
// progress, restarts a child that dies, stops everything when every partition
// is finished or on Ctrl-C / SIGTERM, and writes <output>/summary.json.
// Keeps <run_dir>/prometheus/targets.json (Prometheus file service discovery
// of every child's /metrics) up to date while children restart.
// Running the same command again resumes: tasks with records are skipped.
#pragma once

#include <string>
#include <vector>

namespace matrix::cli {

struct RunOptions {
  std::string pipeline_path;
  std::vector<std::string> overrides;  // key.path=value
  std::string output_dir;              // default: the pipeline's run.output_dir
  // Sockets, logs, progress, endpoint files and prometheus/targets.json.
  // Default: a fresh directory under $TMPDIR, removed after a successful run;
  // a directory given here is kept (what an earlier run left in it is cleared
  // first).
  std::string run_dir;
  int workers = 0;                     // 0: run.workers from the pipeline
  bool overwrite = false;              // delete earlier output instead of resuming
  bool retry_failed = false;           // run the tasks whose records say failed or lost again
  double io_error_limit_s = 600;       // stop when the output cannot be written for this long
  double grace_s = 10;                 // drain time on Ctrl-C / SIGTERM
  int progress_interval_s = 10;        // when stderr is not a terminal
  bool quiet = false;
};

// Returns the process exit code: 0 every task written and none failed or
// lost, 1 failure (a child that keeps dying, output blocked too long, records
// missing), 2 bad configuration or a check before the start failed, 3 every
// task written but some failed or were lost, 128+signal when interrupted
// (130 Ctrl-C, 143 SIGTERM).
int RunPipeline(const RunOptions& options);

}  // namespace matrix::cli
