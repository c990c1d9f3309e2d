// Worker: matrix-worker's event loop. Hosts the pipeline's roles (agents) and
// the sources and sinks of the partitions it owns.
//
// One thread polls the broker socket, the store client, the LLM client's
// completion eventfd and the signal fd. A delivered task is decoded and
// verified, its stored content fetched when the step needs it, the role run
// (LLM calls asynchronously, thousands in flight), the result appended, the
// flow's transitions evaluated on the message to choose the next step, new
// large content offloaded to the store, and the successor submitted to the
// broker together with the acknowledgement of the lease it came under.
// Terminal tasks go to "sink:<owner>", served by the owning worker, which
// writes the record, frees the task's objects and admits the next row.
//
// Exports WorkerMetrics (common/metrics/worker_metrics.h): tasks by status at
// the sink, in-flight work, step and queue-wait times per role, LLM requests,
// errors, latency and tokens per model, store cache and hop sizes.
//
// Shutdown (signal or Stop()): stop admitting, let running steps finish for up
// to `grace_s`, hand the remaining leases back to the broker, exit.
// Thread-safety: Run() on one thread; Stop() from any thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/base/clock.h"
#include "common/base/status.h"
#include "common/llm/llm_client.h"
#include "common/store/store_client.h"
#include "common/transport/transport.h"

namespace matrix::config {
struct Pipeline;
}

namespace matrix::worker {

struct WorkerConfig {
  std::string worker_id = "worker";   // broker identity is "<worker_id>.<pid>"
  std::string node = "local";
  std::string run_id;                 // default: the pipeline name
  std::string broker_endpoint;
  std::string store_endpoint;
  std::string run_dir;                // progress files go to <run_dir>/progress/
  std::string job_id;                 // written into progress files (the SLURM job)
  int progress_ms = 500;              // progress file, stale-task and model-server scan interval
  // When set, a file <finished_dir>/<partition> marks each finished partition.
  std::string finished_dir;
  // "host:port" serving GET /metrics (port 0: any free port), published in
  // <run_dir>/endpoints/<worker_id>.metrics; empty: metrics are not served.
  std::string metrics_bind;
  std::string output_dir;             // <output_dir>/<partition>.jsonl[.zst]
  std::vector<uint32_t> partitions;   // partitions whose source and sink this worker hosts
  std::vector<std::string> roles;     // roles served; empty = every role of the pipeline
  uint32_t sink_capacity = 1024;      // concurrent sink writes per partition
  uint32_t heartbeat_ms = 1000;
  double grace_s = 10;                // drain time on shutdown
  int signal_fd = -1;
  size_t max_message_bytes = 64 << 20;
  // Many nodes: <run_dir>/nodes, where every node's store publishes
  // <node>/endpoints/store (objects of other nodes are fetched there), and
  // the job's keys for CURVE to the broker and the stores. Unset: one node.
  std::string nodes_dir;
  // No other worker serves this run (`matrix run` with one worker): the
  // tasks it admits have nowhere else to go, so their first step runs here
  // in place. Otherwise that step goes through the broker, which spreads the
  // tasks over the workers (and nodes) with credit.
  bool sole_worker = false;
  std::optional<transport::CurveKeyPair> keys;
  // Model servers registered at run time: <models_dir>/<model>/<host>_<port>
  // files each holding a base URL. A model whose pipeline endpoints are
  // `sim` or `registered` uses exactly those; others add them to their list.
  std::string models_dir;
};

// What the worker talks to besides the broker. Each one left empty is made
// from the configuration: an HTTP client with one pool per model of the
// pipeline (none when it has no models) and a client of the store at
// `store_endpoint`. Tests pass fakes (llm::FakeChatService,
// store::FakeObjectStore) and talk to the worker as its broker over inproc://.
struct WorkerServices {
  std::unique_ptr<llm::ChatService> llm;
  std::unique_ptr<store::ObjectStore> store;
};

class Worker {
 public:
  static StatusOr<std::unique_ptr<Worker>> Create(WorkerConfig config,
                                                  std::shared_ptr<const config::Pipeline> pipeline,
                                                  transport::Context* ctx, const Clock* clock,
                                                  WorkerServices services = {});
  ~Worker();
  Status Run();
  void Stop();
  // What Run() does with every message read from the broker socket (frames
  // as received: the control message, then the packed payloads), followed
  // by sending what it produced. Public for the fuzz target of the handler.
  void HandleBrokerMessage(std::vector<std::string>& frames);

  class Impl;

 private:
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace matrix::worker
