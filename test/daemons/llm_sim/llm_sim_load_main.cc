// llm-sim-load: drives an OpenAI-compatible endpoint with N concurrent
// keep-alive connections, each sending chat completions, and prints a JSON
// summary (statuses, latency percentiles, peak open connections, and the
// server's CPU time and peak memory when --server-pid is given).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "common/base/flags.h"
#include "common/base/json.h"
#include "test/daemons/llm_sim/load_client.h"

namespace {

// utime + stime of a process in seconds; -1 when unreadable.
double CpuSeconds(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  size_t close_paren = line.rfind(')');
  if (close_paren == std::string::npos) return -1;
  std::istringstream rest(line.substr(close_paren + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// A "VmHWM"-style field of /proc/<pid>/status in KiB; -1 when unreadable.
long StatusKb(long pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::strtol(line.c_str() + key.size() + 1, nullptr, 10);
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  using matrix::Json;
  auto flags = matrix::Flags::Parse(
      argc, argv,
      {"address", "connections", "requests-per-connection", "max-tokens", "stream", "timeout-s",
       "server-pid", "prompt-chars", "max-connecting"},
      {"stream"});
  if (!flags.ok() || !flags->Has("address")) {
    std::fprintf(stderr,
                 "usage: llm-sim-load --address host:port [--connections 10000] "
                 "[--requests-per-connection 1] [--max-tokens N] [--stream] [--timeout-s 600] "
                 "[--server-pid PID] [--prompt-chars 400] [--max-connecting 256]\n%s\n",
                 flags.ok() ? "" : flags.status().message().c_str());
    return 2;
  }
  matrix::llm_sim::testing::LoadOptions o;
  std::string address = flags->Get("address");
  size_t colon = address.rfind(':');
  o.host = address.substr(0, colon);
  o.port = std::atoi(address.c_str() + colon + 1);
  o.connections = static_cast<int>(flags->GetInt("connections", 10000));
  o.requests_per_connection = static_cast<int>(flags->GetInt("requests-per-connection", 1));
  o.timeout_ms = static_cast<int>(flags->GetInt("timeout-s", 600) * 1000);
  o.max_connecting = static_cast<int>(flags->GetInt("max-connecting", 256));

  // Every request gets its own question, so answers (and their lengths) differ
  // as they would in a real workload.
  std::string filler;
  const size_t prompt_chars = static_cast<size_t>(flags->GetInt("prompt-chars", 400));
  while (filler.size() + 80 < prompt_chars) filler += "Consider the question carefully. ";
  const bool stream = flags->GetBool("stream");
  const bool has_max = flags->Has("max-tokens");
  const int64_t max_tokens = flags->GetInt("max-tokens", 0);
  o.body_for = [=](int connection, int request) {
    Json body;
    body["model"] = "sim";
    std::string prompt = "Question " + std::to_string(connection) + "." + std::to_string(request) +
                         ": which option is correct?\n" + filler +
                         "\nA. one\nB. two\nC. three\nD. four\n";
    body["messages"] = Json::array({{{"role", "user"}, {"content", prompt}}});
    if (has_max) body["max_tokens"] = max_tokens;
    if (stream) body["stream"] = true;
    return body.dump();
  };

  const long pid = static_cast<long>(flags->GetInt("server-pid", 0));
  const double cpu_before = pid > 0 ? CpuSeconds(pid) : -1;
  auto result = matrix::llm_sim::testing::RunLoad(o);
  const double cpu_after = pid > 0 ? CpuSeconds(pid) : -1;
  if (!result.ok()) {
    std::fprintf(stderr, "load failed: %s\n", result.status().ToString().c_str());
    return 1;
  }
  Json out;
  out["connections"] = o.connections;
  out["responses"] = result->responses;
  out["ok"] = result->ok;
  out["failed_connections"] = result->failed_connections;
  Json statuses = Json::object();
  for (const auto& [code, count] : result->by_status) statuses[std::to_string(code)] = count;
  out["by_status"] = statuses;
  out["peak_open_connections"] = result->peak_open;
  out["wall_s"] = result->wall_ms / 1000.0;
  out["requests_per_s"] = static_cast<double>(result->responses) / (result->wall_ms / 1000.0);
  out["latency_ms"] = {{"p50", result->Percentile(50)},
                       {"p90", result->Percentile(90)},
                       {"p99", result->Percentile(99)},
                       {"max", result->Percentile(100)}};
  out["errors"] = result->error_samples;
  if (pid > 0) {
    out["server_cpu_s"] = cpu_after - cpu_before;
    out["server_cpu_percent"] = 100.0 * (cpu_after - cpu_before) / (result->wall_ms / 1000.0);
    out["server_peak_rss_mib"] = static_cast<double>(StatusKb(pid, "VmHWM")) / 1024.0;
  }
  std::printf("%s\n", out.dump(2).c_str());
  return result->failed_connections == 0 && result->ok == result->responses ? 0 : 1;
}
