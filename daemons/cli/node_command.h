// `matrix node`: one node of a job on many nodes (started on every node by
// slurm/matrix.sbatch). Starts and supervises this node's matrix-store,
// matrix-broker and matrix-worker processes on the node's address, all with
// CURVE and the job's keys, over a run directory on the shared filesystem:
//
//   <run_dir>/keys/job.key                  the job's key pair (`matrix keys`)
//   <run_dir>/nodes/<node>/endpoints/       broker, store, worker-N (+ .metrics)
//   <run_dir>/nodes/<node>/progress/        one file per worker
//   <run_dir>/nodes/<node>/logs/            one log per daemon
//   <run_dir>/nodes/<node>/node.json        state, pids, partitions
//   <run_dir>/prometheus/node-<node>.json   file-SD scrape targets of the node
//   <run_dir>/models/<model>/<host>_<port>  model servers (slurm/model_server.sbatch)
//
// Brokers find each other through the endpoint files; each links to its
// nearest peers. The dataset's partitions are spread over every worker of
// every node (partition p goes to global worker p mod (nodes x workers)).
// The node exits 0 when every partition of the run is finished (all nodes'
// progress files of this job), or, on SIGTERM/SIGINT, once its workers have
// drained (grace) and its daemons stopped. Records already written are
// skipped, so submitting the job again on the same run directory resumes.
#pragma once

#include <string>
#include <vector>

namespace matrix::cli {

struct NodeOptions {
  std::string pipeline_path;
  std::vector<std::string> overrides;
  std::string run_dir;     // required, on the shared filesystem
  std::string output_dir;  // default: the pipeline's run.output_dir
  int workers = 0;         // per node; 0: run.workers of the pipeline
  double grace_s = 20;
  std::string node;        // default: $SLURMD_NODENAME, else the hostname
  int node_index = -1;     // default: $SLURM_NODEID, else 0
  int nodes = 0;           // default: $SLURM_JOB_NUM_NODES / $SLURM_NNODES, else 1
  std::string bind_host;   // default: the address the node's hostname resolves to
  std::string job_id;      // default: $SLURM_JOB_ID, else "local"
  int progress_interval_s = 30;
};

int NodeCommand(const NodeOptions& options);
// `matrix keys RUN_DIR`: creates the run directory (0700) and the job's key
// pair when missing.
int KeysCommand(const std::string& run_dir);

}  // namespace matrix::cli
