// Prometheus file service discovery for the daemons of a run.
//
// Every daemon publishes the address of its /metrics server in
// <run_dir>/endpoints/<name>.metrics. ScrapeTargets turns those files into
// <run_dir>/prometheus/targets.json, the list a Prometheus `file_sd_configs`
// entry reads:
//
//   [{"targets": ["127.0.0.1:40123"],
//     "labels": {"job": "matrix", "node": "gpu1", "daemon": "worker", "process": "worker-0"}}, ...]
//
// `daemon` is the kind of process (broker, store, worker, llm-sim) and
// `process` its name in the run. Prometheus rereads the file when it changes,
// so a restarted daemon (new port) is scraped at its new address after the
// next Refresh().
// Thread-safety: not thread-safe; owned by the CLI's main loop.
#pragma once

#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix::cli {

struct ScrapeProcess {
  std::string name;    // process name in the run: "broker", "worker-0", ...
  std::string daemon;  // "broker", "store", "worker", "llm-sim"
};

// The `daemon` label of a process name: "worker-3" -> "worker"; other names
// are their own kind.
std::string DaemonKind(const std::string& process_name);

class ScrapeTargets {
 public:
  // `node` is the value of the `node` label of every target. Endpoint files
  // are read from <run_dir>/endpoints; the list goes to `targets_path`
  // (default <run_dir>/prometheus/targets.json).
  ScrapeTargets(std::string run_dir, std::string node, std::string targets_path = "");

  void Add(const std::string& process_name);
  // Drops the published address of a process that exited, so Prometheus stops
  // scraping it until the restarted process publishes its new one.
  void Forget(const std::string& process_name);

  // Rewrites targets.json when the published addresses changed. Returns
  // whether every process added has published an address. Error when the file
  // cannot be written.
  StatusOr<bool> Refresh();
  // Writes an empty list: the run's daemons are gone.
  Status Clear();

  // "name=host:port" of every process whose address is known.
  std::vector<std::string> Addresses() const;
  const std::string& path() const { return path_; }

 private:
  std::string run_dir_;
  std::string node_;
  std::string path_;
  std::vector<ScrapeProcess> processes_;
  std::vector<std::string> addresses_;  // per process; "" until published
  std::string written_;                 // content last written
};

}  // namespace matrix::cli
