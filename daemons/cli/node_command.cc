#include "daemons/cli/node_command.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "common/base/files.h"
#include "common/base/json.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/config/pipeline_loader.h"
#include "common/transport/job_keys.h"
#include "daemons/cli/preflight.h"
#include "daemons/cli/process.h"
#include "daemons/cli/scrape_targets.h"
#include "daemons/cli/summary.h"

namespace matrix::cli {
namespace {

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::string HostName() {
  char name[256] = {};
  return ::gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0' ? name : "localhost";
}

// The IPv4 address `host` resolves to; a non-loopback one when there is one.
std::string ResolveHost(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) return "127.0.0.1";
  std::string best;
  for (addrinfo* a = res; a; a = a->ai_next) {
    char buf[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, buf, sizeof(buf));
    if (best.empty() || (best.rfind("127.", 0) == 0 && std::string(buf).rfind("127.", 0) != 0)) best = buf;
  }
  freeaddrinfo(res);
  return best.empty() ? "127.0.0.1" : best;
}

// Every partition 0..n-1 has its marker in `finished_dir` (one directory
// listing, however many nodes and workers the job has).
bool AllPartitionsFinished(const std::string& finished_dir, int partitions) {
  std::vector<bool> done(partitions, false);
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(finished_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() < 2 || name[0] != 'p' || name.find('.') != std::string::npos) continue;
    const int idx = std::atoi(name.c_str() + 1);
    if (idx >= 0 && idx < partitions) done[idx] = true;
  }
  for (bool d : done)
    if (!d) return false;
  return true;
}

// "job J (node N)" when a node of another job wrote its state within the last
// 90 s and has not finished; "" otherwise.
std::string LiveNodeOfAnotherJob(const std::string& run_dir, const std::string& job) {
  const int64_t now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  for (const auto& node : RunNodes(run_dir)) {
    auto text = ReadFile(run_dir + "/nodes/" + node + "/node.json");
    if (!text.ok()) continue;
    Json j = Json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || j.value("job", "") == job) continue;
    const std::string state = j.value("state", "");
    if (state != "running" && state != "draining" && state != "finishing") continue;
    if (now_us - j.value("updated_us", int64_t{0}) < 90'000'000)
      return "job " + j.value("job", "?") + " (node " + node + ")";
  }
  return "";
}

}  // namespace

int KeysCommand(const std::string& run_dir) {
  if (Status st = MakeDirs(run_dir, 0700); !st.ok()) {
    std::cerr << "error: " << st.message() << "\n";
    return 1;
  }
  Status st = transport::CreateJobKeys(run_dir);
  if (!st.ok()) {
    std::cerr << "error: " << st.message() << "\n";
    return 1;
  }
  std::cout << transport::JobKeyPath(run_dir) << "\n";
  return 0;
}

int NodeCommand(const NodeOptions& in) {
  NodeOptions opt = in;
  auto loaded = config::LoadPipeline(opt.pipeline_path, opt.overrides);
  if (!loaded.pipeline) {
    for (const auto& e : loaded.errors) std::cerr << "error: " << e.ToString() << "\n";
    return 2;
  }
  const config::Pipeline& pipeline = *loaded.pipeline;
  if (opt.run_dir.empty()) {
    std::cerr << "error: matrix node needs --run-dir (a directory on the shared filesystem)\n";
    return 2;
  }
  if (opt.node.empty()) opt.node = Env("SLURMD_NODENAME", HostName());
  if (opt.node_index < 0) opt.node_index = std::atoi(Env("SLURM_NODEID", "0").c_str());
  if (opt.nodes <= 0) opt.nodes = std::atoi(Env("SLURM_JOB_NUM_NODES", Env("SLURM_NNODES", "1")).c_str());
  if (opt.nodes <= 0 || opt.node_index >= opt.nodes) {
    std::cerr << "error: node index " << opt.node_index << " is outside the job's " << opt.nodes << " nodes\n";
    return 2;
  }
  if (opt.bind_host.empty()) opt.bind_host = ResolveHost(HostName());
  if (opt.job_id.empty()) opt.job_id = Env("SLURM_JOB_ID", "local");
  auto keys = transport::LoadJobKeys(opt.run_dir);
  if (!keys.ok()) {
    std::cerr << "error: " << keys.status().message() << "\n";
    return 2;
  }
  const std::string node_dir = opt.run_dir + "/nodes/" + opt.node;
  // Partitions are assigned per job: another job's live nodes on this run
  // directory would own the same partitions and write the same records.
  if (std::string other = LiveNodeOfAnotherJob(opt.run_dir, opt.job_id); !other.empty()) {
    std::cerr << "error: " << opt.run_dir << " is in use by " << other
              << "; wait for that job to end (or cancel it), or use another run directory\n";
    return 2;
  }
  const std::string output_dir = opt.output_dir.empty() ? pipeline.run.output_dir : opt.output_dir;
  if (auto problems = Preflight(pipeline, output_dir); !problems.empty()) {
    for (const auto& p : problems) std::cerr << "error: " << p << "\n";
    return 2;
  }
  ::umask(::umask(0) | 077);  // run directory, sockets and logs private to the user
  std::error_code ec;
  for (const char* sub : {"endpoints", "progress"}) std::filesystem::remove_all(node_dir + "/" + sub, ec);
  for (const std::string& dir : {node_dir + "/logs", output_dir, opt.run_dir + "/models"}) {
    if (Status st = MakeDirs(dir); !st.ok()) {
      std::cerr << "error: " << st.message() << "\n";
      return 1;
    }
  }
  auto sigfd = CreateSignalFd({SIGINT, SIGTERM});
  if (!sigfd.ok()) return 1;

  const std::string bin = SelfDir();
  const std::string tcp = "tcp://" + opt.bind_host + ":*";
  const std::string metrics = opt.bind_host + ":0";
  Supervisor sup;
  auto log = [&](const std::string& name) { return node_dir + "/logs/" + name + ".log"; };
  auto start = [&](ChildSpec spec) {
    spec.log_path = log(spec.name);
    spec.stop_signal = SIGUSR1;
    Status st = sup.Start(spec);
    if (!st.ok()) std::cerr << "error: cannot start " << spec.name << ": " << st.message() << "\n";
    return st.ok();
  };
  auto fail = [&](const std::string& what) {
    std::cerr << "error: " << what << " (logs in " << node_dir << "/logs)\n";
    sup.StopAll(3000);
    return 1;
  };
  // SLURM signals every process of the step: the daemons leave SIGTERM to
  // this process and stop on SIGUSR1, in order (workers drain first).
  const std::vector<std::string> common = {"--run-dir", node_dir,  "--node",    opt.node,   "--keys-dir",
                                           opt.run_dir, "--metrics", metrics, "--stop-signal", "usr1"};
  auto with = [&](std::vector<std::string> argv) {
    argv.insert(argv.end(), common.begin(), common.end());
    return argv;
  };
  if (!start({"store", with({bin + "/matrix-store", "--bind", tcp, "--name", "store"}), /*log_path=*/{}})) return 1;
  if (!start({"broker", with({bin + "/matrix-broker", "--bind", tcp, "--name", "broker", "--nodes-dir",
                              opt.run_dir + "/nodes"}),
              /*log_path=*/{}}))
    return 1;
  auto store_ep = WaitEndpointFile(node_dir, "store", 20000);
  if (!store_ep.ok()) return fail("the store did not start");
  auto broker_ep = WaitEndpointFile(node_dir, "broker", 20000);
  if (!broker_ep.ok()) return fail("the broker did not start");

  const int workers = opt.workers > 0 ? opt.workers : std::max(1, pipeline.run.workers);
  const std::string finished_dir = opt.run_dir + "/finished/" + opt.job_id;
  const int partitions = static_cast<int>(pipeline.dataset.partitions);
  const int global_workers = opt.nodes * workers;
  std::vector<std::string> worker_names;
  std::string my_partitions;
  for (int w = 0; w < workers; ++w) {
    const int g = opt.node_index * workers + w;
    std::string parts;
    for (int p = 0; p < partitions; ++p)
      if (p % global_workers == g) parts += (parts.empty() ? "" : ",") + std::to_string(p);
    const std::string name = "worker-" + std::to_string(w);
    ChildSpec spec{name, with({bin + "/matrix-worker", "--pipeline", pipeline.source_path, "--broker", *broker_ep,
                               "--store", *store_ep, "--output-dir", output_dir, "--id", name, "--nodes-dir",
                               opt.run_dir + "/nodes", "--models-dir", opt.run_dir + "/models", "--job",
                               opt.job_id, "--grace-s", std::to_string(opt.grace_s), "--finished-dir",
                               finished_dir, "--progress-ms", "2000"}),
                   /*log_path=*/{}};
    if (!parts.empty()) {
      spec.argv.push_back("--partitions");
      spec.argv.push_back(parts);
      my_partitions += (my_partitions.empty() ? "" : ",") + parts;
    }
    for (const auto& o : opt.overrides) spec.argv.push_back(o);
    if (!start(spec)) return fail("cannot start " + name);
    worker_names.push_back(name);
  }
  // Every node's list sits next to the others: one file_sd glob covers the job.
  ScrapeTargets targets(node_dir, opt.node, opt.run_dir + "/prometheus/node-" + opt.node + ".json");
  for (const char* n : {"store", "broker"}) targets.Add(n);
  for (const auto& n : worker_names) targets.Add(n);

  auto write_state = [&](const std::string& state) {
    Json pids = Json::object();
    for (const char* n : {"store", "broker"}) pids[n] = sup.Pid(n);
    for (const auto& n : worker_names) pids[n] = sup.Pid(n);
    Json j = {{"node", opt.node},        {"index", opt.node_index}, {"nodes", opt.nodes},
              {"job", opt.job_id},        {"address", opt.bind_host}, {"state", state},
              {"pid", ::getpid()},        {"daemons", pids},          {"partitions", my_partitions},
              {"workers", workers},       {"broker", *broker_ep},     {"store", *store_ep},
              {"updated_us", std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count()}};
    Status st = WriteFileAtomic(node_dir + "/node.json", DumpJson(j, 2) + "\n", 0644, Durability::kProcessCrash);
    if (!st.ok()) LOG_WARN << st.message();
  };
  write_state("running");
  std::cerr << "matrix node " << opt.node << " (" << opt.node_index + 1 << "/" << opt.nodes << ", job "
            << opt.job_id << ") at " << opt.bind_host << ": broker " << *broker_ep << ", store " << *store_ep
            << ", " << workers << " workers, partitions [" << my_partitions << "] of " << partitions
            << "; logs " << node_dir << "/logs\n";

  auto t0 = std::chrono::steady_clock::now();
  auto last_line = t0;
  auto last_state = t0;
  bool interrupted = false;
  int exit_code = 0;
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (int sig = ReadSignal(*sigfd); sig != 0) {
      interrupted = true;
      std::cerr << "matrix node " << opt.node << ": signal " << sig << ", draining (grace " << opt.grace_s
                << " s)\n";
      break;
    }
    for (const auto& name : sup.Reap(/*restart=*/true)) targets.Forget(name);
    if (!sup.gave_up().empty()) {
      std::cerr << "matrix node " << opt.node << ": stopping: " << sup.gave_up() << "\n";
      exit_code = 1;
      break;
    }
    if (auto refreshed = targets.Refresh(); !refreshed.ok()) LOG_WARN << refreshed.status().message();
    if (AllPartitionsFinished(finished_dir, partitions)) break;
    auto now = std::chrono::steady_clock::now();
    if (now - last_state > std::chrono::seconds(10)) {
      last_state = now;
      write_state("running");  // fresh: other jobs see this run directory is in use
    }
    if (now - last_line > std::chrono::seconds(opt.progress_interval_s)) {
      last_line = now;
      // The first node reports the whole run, the others their own workers.
      Progress p = opt.node_index == 0 ? ReadProgress(opt.run_dir, opt.job_id) : ReadProgress(node_dir, opt.job_id);
      double t = std::chrono::duration<double>(now - t0).count();
      std::cerr << "[" << opt.node << "] " << FormatProgress(p, t, t > 0 ? p.completion_tokens / t : 0, 0) << "\n";
    }
  }
  write_state(interrupted ? "draining" : "finishing");
  // Workers first: they finish or hand back their work within the grace.
  // Not interruptible: SLURM may deliver its SIGTERM more than once.
  sup.Stop(worker_names, static_cast<int>(opt.grace_s * 1000) + 3000);
  sup.StopAll(5000);
  if (Status cleared = targets.Clear(); !cleared.ok()) LOG_WARN << cleared.message();
  Progress p = ReadProgress(node_dir, opt.job_id);
  std::cerr << "matrix node " << opt.node << (interrupted ? " drained" : " finished") << ": its partitions hold "
            << p.written << "/" << p.total << " records in " << output_dir << " (" << sup.restarts()
            << " restarts)\n";
  write_state(interrupted ? "drained" : "finished");
  return exit_code;
}

}  // namespace matrix::cli
