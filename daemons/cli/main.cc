// matrix: the researcher's front end.
//   matrix run PIPELINE.yaml [key.path=value ...] [--output DIR] [--run-dir DIR] [--workers N] [--resume | --overwrite | --retry-failed]
//   matrix validate PIPELINE.yaml [key.path=value ...]
//   matrix status RUN_DIR
//   matrix keys RUN_DIR
//   matrix node --run-dir DIR PIPELINE.yaml [key.path=value ...] [--output DIR] [--workers N] ...
//   matrix export OUTPUT_DIR --format sft|rl|stats [--out FILE] [--pipeline FILE [key.path=value ...]]
#include <iostream>

#include "common/base/flags.h"
#include "common/base/log.h"
#include "daemons/cli/commands.h"
#include "daemons/cli/export_command.h"
#include "daemons/cli/node_command.h"
#include "daemons/cli/run_command.h"

namespace {
const char kUsage[] =
    "usage:\n"
    "  matrix run PIPELINE.yaml [key.path=value ...] [--output DIR] [--run-dir DIR] [--workers N]\n"
    "             [--resume | --overwrite | --retry-failed] [--grace-s S] [--io-error-limit-s S]\n"
    "             [--progress-interval-s S] [--quiet]\n"
    "  matrix validate PIPELINE.yaml [key.path=value ...]\n"
    "  matrix status RUN_DIR\n"
    "  matrix keys RUN_DIR\n"
    "  matrix node --run-dir DIR PIPELINE.yaml [key.path=value ...] [--output DIR] [--workers N]\n"
    "              [--grace-s S] [--node NAME] [--node-index I] [--nodes N] [--bind-host ADDR] [--job ID]\n"
    "  matrix export OUTPUT_DIR --format sft|rl|stats [--out FILE] [--pipeline FILE [key.path=value ...]]\n";
}

int main(int argc, char** argv) {
  using namespace matrix;
  SetLogComponent("matrix");
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  std::string cmd = argv[1];
  auto flags = Flags::Parse(argc - 1, argv + 1, {"output", "run-dir", "workers", "overwrite", "resume", "grace-s", "quiet", "help",
                                                         "retry-failed", "io-error-limit-s", "progress-interval-s", "format", "out", "pipeline", "node", "node-index",
                                                         "nodes", "bind-host", "job"},
                            {"overwrite", "resume", "quiet", "help", "retry-failed"});
  if (!flags.ok()) {
    std::cerr << "error: " << flags.status().message() << "\n" << kUsage;
    return 2;
  }
  std::vector<std::string> args = flags->positional();
  if (flags->GetBool("help") || args.empty()) {
    std::cerr << kUsage;
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "run") {
    cli::RunOptions opt;
    opt.pipeline_path = args[0];
    opt.overrides = rest;
    opt.output_dir = flags->Get("output");
    opt.run_dir = flags->Get("run-dir");
    opt.workers = static_cast<int>(flags->GetInt("workers", 0));
    opt.overwrite = flags->GetBool("overwrite");
    opt.retry_failed = flags->GetBool("retry-failed");
    opt.io_error_limit_s = flags->GetDouble("io-error-limit-s", opt.io_error_limit_s);
    opt.progress_interval_s = static_cast<int>(flags->GetInt("progress-interval-s", opt.progress_interval_s));
    // Resuming is what a rerun always does; --resume says so explicitly and
    // cannot be combined with --overwrite.
    if (opt.overwrite && flags->GetBool("resume")) {
      std::cerr << "error: --resume and --overwrite contradict each other\n";
      return 2;
    }
    opt.grace_s = flags->GetDouble("grace-s", opt.grace_s);
    opt.quiet = flags->GetBool("quiet");
    return cli::RunPipeline(opt);
  }
  if (cmd == "node") {
    cli::NodeOptions opt;
    opt.pipeline_path = args[0];
    opt.overrides = rest;
    opt.run_dir = flags->Get("run-dir");
    opt.output_dir = flags->Get("output");
    opt.workers = static_cast<int>(flags->GetInt("workers", 0));
    opt.grace_s = flags->GetDouble("grace-s", opt.grace_s);
    opt.node = flags->Get("node");
    opt.node_index = static_cast<int>(flags->GetInt("node-index", -1));
    opt.nodes = static_cast<int>(flags->GetInt("nodes", 0));
    opt.bind_host = flags->Get("bind-host");
    opt.job_id = flags->Get("job");
    return cli::NodeCommand(opt);
  }
  if (cmd == "keys") return cli::KeysCommand(args[0]);
  if (cmd == "validate") return cli::ValidateCommand(args[0], rest);
  if (cmd == "status") return cli::StatusCommand(args[0]);
  if (cmd == "export") {
    cli::ExportOptions opt;
    opt.output_dir = args[0];
    opt.format = flags->Get("format");
    opt.out_path = flags->Get("out");
    opt.pipeline_path = flags->Get("pipeline");
    opt.overrides = rest;
    if (!rest.empty() && opt.pipeline_path.empty()) {
      std::cerr << "error: overrides need --pipeline\n" << kUsage;
      return 2;
    }
    return cli::ExportCommand(opt);
  }
  std::cerr << "error: unknown command '" << cmd << "'\n" << kUsage;
  return 2;
}
