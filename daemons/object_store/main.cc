// matrix-store: this node's object store (put / get / free by reference,
// memory budget with spill to node-local disk, checksums, TTL safety net).
// Flags -> StoreConfig -> StoreServer::Create -> Run; SIGTERM/SIGINT stop it
// through a signalfd polled by the server's loop, and it exits 0.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include "common/base/flags.h"
#include "common/base/log.h"
#include "common/base/signals.h"
#include "common/transport/job_keys.h"
#include "common/transport/transport.h"
#include "daemons/object_store/store_server.h"

int main(int argc, char** argv) {
  using namespace matrix;
  SetLogComponent("store");
  auto flags = Flags::Parse(argc, argv, {"bind", "run-dir", "name", "node", "memory-budget-mb",
                                         "spill-dir", "ttl-s", "max-object-mb", "metrics", "log-level",
                                         "keys-dir", "stop-signal"});
  if (!flags.ok()) {
    LOG_ERROR << flags.status().message();
    return 2;
  }
  const std::string level = flags->Get("log-level", "info");
  SetLogLevel(level == "debug" ? LogLevel::kDebug
              : level == "warning" ? LogLevel::kWarning
              : level == "error" ? LogLevel::kError : LogLevel::kInfo);
  // Blocked before any thread (ZeroMQ's I/O threads) starts.
  auto sigfd = CreateStopSignalFd(flags->Get("stop-signal"));
  if (!sigfd.ok()) {
    LOG_ERROR << sigfd.status().ToString();
    return 1;
  }

  store::StoreConfig config;
  config.bind = flags->Get("bind", config.bind);
  config.run_dir = flags->Get("run-dir");
  config.name = flags->Get("name", config.name);
  config.node = flags->Get("node", config.node);
  config.memory_budget_bytes = flags->GetInt("memory-budget-mb", config.memory_budget_bytes >> 20) << 20;
  config.default_ttl_ms = flags->GetInt("ttl-s", config.default_ttl_ms / 1000) * 1000;
  config.max_object_bytes = flags->GetInt("max-object-mb", config.max_object_bytes >> 20) << 20;
  const char* tmp = std::getenv("TMPDIR");
  config.spill_dir = flags->Get("spill-dir", std::string(tmp ? tmp : "/tmp") + "/matrix-store-" +
                                                 config.node + "-" + std::to_string(::getpid()));
  config.metrics_bind = flags->Get("metrics", "127.0.0.1:0");  // "": not served
  config.signal_fd = *sigfd;
  if (flags->Has("keys-dir")) {  // require CURVE with the job keys in <dir>/keys/job.key
    auto keys = transport::LoadJobKeys(flags->Get("keys-dir"));
    if (!keys.ok()) {
      LOG_ERROR << keys.status().message();
      return 2;
    }
    config.keys = *keys;
  }

  transport::Context ctx;
  auto server = store::StoreServer::Create(config, &ctx, SystemClock::Get());
  if (!server.ok()) {
    LOG_ERROR << "cannot start store: " << server.status().ToString();
    return 1;
  }
  Status st = (*server)->Run();
  server->reset();  // removes the spill files of objects still held
  if (!flags->Has("spill-dir")) ::rmdir(config.spill_dir.c_str());
  return st.ok() ? 0 : 1;
}
