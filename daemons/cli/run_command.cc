#include "daemons/cli/run_command.h"

#include <signal.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <deque>
#include <iostream>
#include <thread>

#include "common/base/files.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/config/pipeline_loader.h"
#include "daemons/cli/preflight.h"
#include "daemons/cli/process.h"
#include "daemons/cli/scrape_targets.h"
#include "daemons/cli/stats_client.h"
#include "daemons/cli/summary.h"

namespace matrix::cli {
namespace {

std::string MakeRunDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/matrix-run-XXXXXX";
  char* made = mkdtemp(tmpl.data());
  return made ? std::string(made) : std::string();
}

// Removes what an earlier run left in a reused run directory: its endpoint,
// progress and spill files would otherwise be taken for this run's.
Status ClearRunState(const std::string& run_dir) {
  std::error_code ec;
  for (const char* sub : {"endpoints", "progress", "spill", "prometheus/targets.json"}) {
    std::filesystem::remove_all(run_dir + "/" + sub, ec);
    if (ec) return FailedPrecondition("cannot clear " + run_dir + "/" + sub + ": " + ec.message());
  }
  return Status::Ok();
}

// How the run's record files end: ".jsonl", or ".jsonl.zst" (run.output_compression).
std::string RecordSuffix(const config::Pipeline& pipeline) {
  return pipeline.run.output_compression == config::RunConfig::OutputCompression::kZstd ? ".jsonl.zst" : ".jsonl";
}

std::string HostName() {
  char name[256] = {};
  return ::gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0' ? name : "localhost";
}

void PrintLogTail(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return;
  std::string s = *text;
  if (s.size() > 2000) s = "..." + s.substr(s.size() - 2000);
  std::cerr << "---- " << path << " ----\n" << s << "\n";
}

// Simulator flags from the pipeline's optional `simulator:` map.
std::vector<std::string> SimulatorFlags(const config::Pipeline& p) {
  std::vector<std::string> out;
  if (!p.merged.contains("simulator") || !p.merged["simulator"].is_object()) return out;
  for (const auto& [k, v] : p.merged["simulator"].items()) {
    std::string flag = k;
    for (auto& c : flag)
      if (c == '_') c = '-';
    out.push_back("--" + flag + "=" + (v.is_string() ? v.get<std::string>() : DumpJson(v)));
  }
  return out;
}

}  // namespace

int RunPipeline(const RunOptions& opt) {
  auto loaded = config::LoadPipeline(opt.pipeline_path, opt.overrides);
  if (!loaded.pipeline) {
    for (const auto& e : loaded.errors) std::cerr << "error: " << e.ToString() << "\n";
    return 2;
  }
  const config::Pipeline& pipeline = *loaded.pipeline;
  const PriceTable prices = PricesOf(pipeline);
  std::string output_dir = opt.output_dir.empty() ? pipeline.run.output_dir : opt.output_dir;
  // What a worker would die of at start is refused here, once, with the reason.
  if (auto problems = Preflight(pipeline, output_dir, opt.overwrite); !problems.empty()) {
    for (const auto& p : problems) std::cerr << "error: " << p << "\n";
    return 2;
  }
  // Run directories, sockets and records are private to the user.
  ::umask(::umask(0) | 077);
  if (opt.overwrite) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(output_dir, ec))
      if (entry.path().extension() == ".jsonl" || entry.path().filename() == "summary.json" ||
          (entry.path().extension() == ".zst" && entry.path().stem().extension() == ".jsonl"))
        std::filesystem::remove(entry.path(), ec);
    if (ec) LOG_WARN << "could not clear " << output_dir << ": " << ec.message();
  }
  if (opt.retry_failed) {
    auto dropped = DropFailedRecords(output_dir);
    if (!dropped.ok()) {
      std::cerr << "error: " << dropped.status().message() << "\n";
      return 1;
    }
    std::cerr << "matrix run: retrying " << *dropped << " failed or lost tasks (their records moved to "
              << output_dir << "/*" << RecordSuffix(pipeline) << ".retried)\n";
  }
  if (Status st = MakeDirs(output_dir); !st.ok()) {
    std::cerr << "error: " << st.message() << "\n";
    return 1;
  }
  std::string run_dir = opt.run_dir.empty() ? MakeRunDir() : opt.run_dir;
  if (!opt.run_dir.empty()) {
    Status cleared = MakeDirs(run_dir, 0700);
    if (cleared.ok() && ::chmod(run_dir.c_str(), 0700) != 0)
      cleared = FailedPrecondition("cannot make " + run_dir + " private: " + std::strerror(errno));
    if (cleared.ok()) cleared = ClearRunState(run_dir);
    if (!cleared.ok()) {
      std::cerr << "error: " << cleared.message() << "\n";
      return 1;
    }
  }
  if (run_dir.empty() || !MakeDirs(run_dir + "/logs").ok()) {
    std::cerr << "error: cannot create a run directory " << (opt.run_dir.empty() ? "under $TMPDIR" : run_dir) << "\n";
    return 1;
  }
  auto sigfd = CreateSignalFd({SIGINT, SIGTERM});
  if (!sigfd.ok()) return 1;

  std::string bin = SelfDir();
  Supervisor sup;
  auto log = [&](const std::string& name) { return run_dir + "/logs/" + name + ".log"; };
  auto start = [&](ChildSpec spec) -> bool {
    spec.log_path = log(spec.name);
    Status st = sup.Start(spec);
    if (!st.ok()) std::cerr << "error: cannot start " << spec.name << ": " << st.message() << "\n";
    return st.ok();
  };
  auto fail = [&](const std::string& what, const std::string& name) {
    std::cerr << "error: " << what << "\n";
    PrintLogTail(log(name));
    sup.StopAll(3000);
    return 1;
  };

  // Models whose endpoints say `sim` are served by a local simulator.
  std::vector<std::string> overrides = opt.overrides;
  std::vector<std::string> sim_models;
  for (const auto& [name, model] : pipeline.models)
    for (const auto& ep : model.endpoints)
      if (ep == "sim") sim_models.push_back(name);
  if (!sim_models.empty()) {
    ChildSpec sim{"llm-sim", {bin + "/matrix-llm-sim", "--listen", "127.0.0.1:0", "--run-dir", run_dir, "--name", "llm-sim"}, ""};
    for (auto& f : SimulatorFlags(pipeline)) sim.argv.push_back(f);
    if (!start(sim)) return 1;
    auto ep = WaitEndpointFile(run_dir, "llm-sim", 15000);
    if (!ep.ok()) return fail("the simulator did not start", "llm-sim");
    for (const auto& m : sim_models) overrides.push_back("models." + m + ".endpoints=[" + *ep + "]");
  }

  std::string store_ep = "ipc://" + run_dir + "/store.sock";
  std::string broker_ep = "ipc://" + run_dir + "/broker.sock";
  if (!start({"store", {bin + "/matrix-store", "--bind", store_ep, "--run-dir", run_dir, "--name", "store",
                        "--spill-dir", run_dir + "/spill"}, ""}))
    return 1;
  if (!start({"broker", {bin + "/matrix-broker", "--bind", broker_ep, "--run-dir", run_dir, "--name", "broker"}, ""}))
    return 1;
  if (!WaitEndpointFile(run_dir, "store", 15000).ok()) return fail("the store did not start", "store");
  if (!WaitEndpointFile(run_dir, "broker", 15000).ok()) return fail("the broker did not start", "broker");

  int workers = opt.workers > 0 ? opt.workers : std::max(1, pipeline.run.workers);
  uint32_t partitions = pipeline.dataset.partitions;
  std::vector<std::string> worker_names;
  for (int w = 0; w < workers; ++w) {
    std::string parts;
    for (uint32_t p = 0; p < partitions; ++p)
      if (static_cast<int>(p % workers) == w) parts += (parts.empty() ? "" : ",") + std::to_string(p);
    std::string name = "worker-" + std::to_string(w);
    ChildSpec spec{name,
                   {bin + "/matrix-worker", "--pipeline", pipeline.source_path, "--broker", broker_ep, "--store",
                    store_ep, "--output-dir", output_dir, "--run-dir", run_dir, "--id", name, "--grace-s",
                    std::to_string(opt.grace_s)}, ""};
    if (!parts.empty()) {
      spec.argv.push_back("--partitions");
      spec.argv.push_back(parts);
    }
    if (workers == 1) spec.argv.push_back("--sole-worker");
    for (const auto& o : overrides) spec.argv.push_back(o);
    if (!start(spec)) return 1;
    worker_names.push_back(name);
  }
  std::string pids;
  for (const char* n : {"store", "broker"}) pids += std::string(" ") + n + "=" + std::to_string(sup.Pid(n));
  for (const auto& n : worker_names) pids += " " + n + "=" + std::to_string(sup.Pid(n));
  if (!sim_models.empty()) pids += " llm-sim=" + std::to_string(sup.Pid("llm-sim"));
  std::cerr << "matrix run: pipeline '" << pipeline.name << "', output " << output_dir << ", logs " << run_dir
            << "/logs\n  processes:" << pids << "\n";
  ScrapeTargets targets(run_dir, HostName());
  for (const char* n : {"store", "broker"}) targets.Add(n);
  for (const auto& n : worker_names) targets.Add(n);
  if (!sim_models.empty()) targets.Add("llm-sim");
  std::cerr << "  metrics:   " << run_dir << "/endpoints/*.metrics; Prometheus targets " << targets.path()
            << " (scripts/monitor " << run_dir << ")\n";
  bool targets_shown = opt.quiet;

  bool tty = isatty(2) && !opt.quiet;
  auto t0 = std::chrono::steady_clock::now();
  auto last_line = t0;
  std::deque<std::pair<double, std::pair<int64_t, int64_t>>> window;  // (t, (tokens, written))
  int exit_code = 0;
  bool interrupted = false;
  int stop_signal = 0;
  std::string stopped_because;  // a reason to stop before every partition is finished
  std::map<std::string, double> down_since;  // model -> when it was first seen with no healthy endpoint
  Progress p;
  bool seen_progress = false;
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (int sig = ReadSignal(*sigfd); sig != 0) {
      interrupted = true;
      stop_signal = sig;
      std::cerr << "\ninterrupted: stopping workers (grace " << opt.grace_s << " s)\n";
      break;
    }
    for (const auto& name : sup.Reap(/*restart=*/true)) {
      targets.Forget(name);
      if (name.rfind("worker", 0) != 0) LOG_WARN << name << " exited";
    }
    if (!sup.gave_up().empty()) {
      stopped_because = "stopping: " + sup.gave_up();
      break;
    }
    auto complete = targets.Refresh();
    if (!complete.ok()) {
      LOG_WARN << complete.status().message();
    } else if (*complete && !targets_shown) {
      targets_shown = true;
      std::string list;
      for (const auto& a : targets.Addresses()) list += " " + a;
      std::cerr << (tty ? "\r\033[K" : "") << "  /metrics: " << list << "\n";
    }
    p = ReadProgress(run_dir);
    p.prices = prices;
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    window.push_back({t, {p.completion_tokens, p.written}});
    while (window.size() > 2 && t - window.front().first > 10) window.pop_front();
    double dt = t - window.front().first;
    double tok_s = dt > 0 ? (p.completion_tokens - window.front().second.first) / dt : 0;
    double task_s = dt > 0 ? (p.written - window.front().second.second) / dt : 0;
    // A model none of whose endpoints answers: the run waits (nothing is
    // charged) for up to its outage_s, then stops; the waiting tasks have no
    // record, so the same command picks them up once the model is back.
    std::string down;
    for (const auto& [name, model] : pipeline.models) {
      auto it = p.model_up.find(name);
      if (it == p.model_up.end() || it->second) {
        down_since.erase(name);
        continue;
      }
      const double since = down_since.emplace(name, t).first->second;
      down += "MODEL " + name + " UNREACHABLE " + FormatDuration(t - since) + " | ";
      if (t - since > model.outage_s && stopped_because.empty())
        stopped_because = "stopping: no endpoint of model '" + name + "' has answered for " +
                          FormatDuration(t - since) + " (its outage_s is " + FormatDuration(model.outage_s) +
                          "); run the same command again once it is back: the waiting tasks have no record yet";
    }
    std::string line = down + FormatProgress(p, t, tok_s, task_s);
    if (tty) {
      // One write: a terminal never shows the cleared line without the new one.
      std::cerr << ("\r\033[K" + line) << std::flush;
    } else if (!opt.quiet && std::chrono::steady_clock::now() - last_line >
                                 std::chrono::seconds(opt.progress_interval_s)) {
      last_line = std::chrono::steady_clock::now();
      std::cerr << line << "\n";
    }
    if (!stopped_because.empty()) break;
    if (!p.io_error.empty() && p.io_error_s > opt.io_error_limit_s) {
      stopped_because = "stopping: output blocked for " + FormatDuration(p.io_error_s) + ": " + p.io_error +
                        " (limit " + FormatDuration(opt.io_error_limit_s) + "); free space and run the same command again";
      break;
    }
    if (p.partitions == static_cast<int>(partitions)) seen_progress = true;
    if (seen_progress && p.partitions_finished == static_cast<int>(partitions)) break;
  }
  if (tty) std::cerr << "\n";
  if (!stopped_because.empty()) std::cerr << "error: " << stopped_because << "\n";
  // Daemon counters for the summary, taken before they stop.
  auto broker_stats = QueryStats(broker_ep);
  auto store_stats = QueryStats(store_ep);
  // Workers first (they drain and hand back), then the rest.
  sup.Stop(worker_names, static_cast<int>(opt.grace_s * 1000) + 3000, *sigfd);
  sup.StopAll(5000);
  // The workers' final counts, records written while draining included, so
  // the summary agrees with the files.
  if (Progress last = ReadProgress(run_dir); last.partitions >= p.partitions) p = last;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (Status cleared = targets.Clear(); !cleared.ok()) LOG_WARN << cleared.message();

  auto summary = SummarizeOutput(output_dir, prices);
  if (!summary.ok()) {
    std::cerr << "error: " << summary.status().message() << "\n";
    return 1;
  }
  Json s = *summary;
  s["pipeline"] = pipeline.name;
  s["output_dir"] = output_dir;
  s["elapsed_s"] = elapsed;
  s["tasks_total"] = p.total;
  s["resumed_from_earlier_runs"] = p.preexisting;
  s["written_this_run"] = p.written - p.preexisting;
  s["interrupted"] = interrupted;
  s["process_restarts"] = sup.restarts();
  s["tokens_this_run"] = p.tokens;
  // Generation and prompt processing are different work: reported apart.
  s["completion_tokens_this_run"] = p.completion_tokens;
  s["prompt_tokens_this_run"] = p.tokens - p.completion_tokens;
  s["completion_tokens_per_s"] = elapsed > 0 ? p.completion_tokens / elapsed : 0.0;
  s["prompt_tokens_per_s"] = elapsed > 0 ? (p.tokens - p.completion_tokens) / elapsed : 0.0;
  if (broker_stats.ok()) {
    const Json& c = (*broker_stats)["counters"];
    int64_t hops = c.value("submitted", int64_t{0});
    s["broker"] = {{"messages", hops},
                   {"payload_bytes", c.value("bytes_in", int64_t{0})},
                   {"mean_bytes_per_hop", hops ? c.value("bytes_in", int64_t{0}) / static_cast<double>(hops) : 0.0},
                   {"redelivered", c.value("redelivered", int64_t{0})},
                   {"invalid_messages", c.value("invalid", int64_t{0})}};
  }
  if (store_stats.ok()) s["store"] = *store_stats;
  if (s.contains("cost")) {
    // What the workers spent in this run (their final progress files), failed
    // attempts included; "total" is the cost of the tokens in the records.
    if (auto spent = CostOf(p.tokens_by_model, prices)) s["cost"]["this_run"] = spent->total;
  }
  Status st = WriteFileAtomic(output_dir + "/summary.json", DumpJson(s, 2) + "\n");
  if (!st.ok()) std::cerr << "warning: " << st.message() << "\n";

  std::cerr << "\n== " << pipeline.name << (interrupted ? " (interrupted)" : "") << " ==\n";
  std::cerr << "  tasks:        " << s["records"] << " records of " << p.total << " ("
            << s["resumed_from_earlier_runs"] << " from earlier runs), duplicates " << s["duplicates"] << "\n";
  std::cerr << "  by status:    " << DumpJson(s["by_status"]) << "\n";
  std::cerr << "  by reason:    " << DumpJson(s["by_reason"]) << "\n";
  for (const auto& [k, v] : s["rates"].items()) {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "  %-13s %.3f\n", (k + ":").c_str(), v.get<double>());
    std::cerr << buf;
  }
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "  tokens:       %lld prompt + %lld completion in the records; this run %.0f completion tok/s, "
                "%.0f prompt tok/s over %s\n",
                static_cast<long long>(s["prompt_tokens"].get<int64_t>()),
                static_cast<long long>(s["completion_tokens"].get<int64_t>()),
                s["completion_tokens_per_s"].get<double>(), s["prompt_tokens_per_s"].get<double>(),
                FormatDuration(elapsed).c_str());
  std::cerr << buf;
  if (s.contains("cost")) {
    const Json& c = s["cost"];
    const std::string currency = c.value("currency", "USD");
    const std::string total = FormatMoney(c.value("total", 0.0), currency);
    std::string by_model;
    for (const auto& [model, m] : c["by_model"].items())
      by_model += (by_model.empty() ? "" : ", ") + model + " " + FormatMoney(m.value("cost", 0.0), currency);
    std::string line = "  cost:         " + total + " (" + by_model + ")";
    if (c.contains("this_run")) {
      const std::string this_run = FormatMoney(c.value("this_run", 0.0), currency);
      if (this_run != total) line += "; spent by this run " + this_run;
    }
    if (c.contains("unpriced_models")) {
      std::string names;
      for (const auto& m : c["unpriced_models"]) names += (names.empty() ? "" : ", ") + m.get<std::string>();
      line += "; no price for " + names;
    }
    std::cerr << line << "\n";
  }
  std::cerr << "  output:       " << output_dir << "/p*" << RecordSuffix(pipeline) << ", " << output_dir
            << "/summary.json\n";
  const int64_t failed = s["by_status"].value("failed", int64_t{0});
  const int64_t lost = s["by_status"].value("lost", int64_t{0});
  if (interrupted) {
    exit_code = 128 + stop_signal;  // 130 for Ctrl-C, 143 for SIGTERM
  } else if (!stopped_because.empty() || s["records"].get<int64_t>() < p.total) {
    exit_code = 1;
  } else if (failed + lost > 0) {
    std::cerr << "  " << failed << " tasks failed and " << lost
              << " were lost (see \"by reason\"); `matrix run` with --retry-failed runs exactly those again\n";
    exit_code = 3;
  }
  if (exit_code == 0 && opt.run_dir.empty() && !getenv("MATRIX_KEEP_RUN_DIR")) {
    std::error_code ec;
    std::filesystem::remove_all(run_dir, ec);
    if (ec) LOG_WARN << "could not remove " << run_dir << ": " << ec.message();
  }
  return exit_code;
}

}  // namespace matrix::cli
