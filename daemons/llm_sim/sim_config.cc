// Flag parsing and validation for matrix-llm-sim. Single-threaded, start-up only.
#include "daemons/llm_sim/sim_config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include "common/base/flags.h"

namespace matrix::llm_sim {
namespace {

struct FlagDoc {
  const char* name;
  const char* doc;
};

const FlagDoc kFlagDocs[] = {
    {"listen", "host:port to bind (port 0: ephemeral) [127.0.0.1:0]"},
    {"port-file", "write the bound host:port here after bind"},
    {"run-dir", "job run directory; writes endpoints/<name> = http://host:port/v1"},
    {"name", "endpoint name inside the run directory [llm-sim]"},
    {"metrics", "host:port serving /metrics, published as endpoints/<name>.metrics; '' for none [127.0.0.1:0]"},
    {"model-name", "model id served and echoed [sim]"},
    {"max-model-len", "context window in tokens [32768]"},
    {"threads", "event-loop threads [1]"},
    {"log-level", "debug|info|warn|error [info]"},
    {"slots", "batch slots [256]"},
    {"step-ms", "fixed part of one engine step, ms [8]"},
    {"step-ms-per-seq", "step time added per decoding sequence, ms [0.02]"},
    {"prefill-tokens-per-s", "prefill throughput [50000]"},
    {"mean-output-tokens", "mean output length [120]"},
    {"tail-alpha", "output length tail shape, > 1 [2.0]"},
    {"speed", "divides every simulated duration [1.0]"},
    {"answer-mode", "mc|none: end texts with 'The answer is (X).' [mc]"},
    {"agree-prob", "probability of repeating the conversation's last answer [0.6]"},
    {"tool-call-prob", "probability of a tool call when tools are offered [0.3]"},
    {"text-after-tool-prob", "probability of a text answer right after a tool result [0.8]"},
    {"parallel-tool-prob", "probability of 2-3 parallel tool calls when allowed [0.1]"},
    {"user-stop-prob", "playing a user (system has ###STOP###): probability of ending with ###STOP### [0.2]"},
    {"user-max-turns", "playing a user: always end with ###STOP### after this many own turns [12]"},
    {"ignore-seed", "draw every choice from the request's messages alone, not its seed: orchestrators that send "
                    "the same messages get the same answers and lengths [false]"},
    {"invalid-json-prob", "probability of a broken structured-output reply (cut short or missing a required property) [0]"},
    {"fault-429", "probability of 429 + Retry-After [0]"},
    {"fault-500", "probability of 500 [0]"},
    {"fault-503", "probability of 503 [0]"},
    {"fault-hang", "probability of never answering [0]"},
    {"fault-drop", "probability of closing without a response [0]"},
    {"fault-malformed", "probability of a 200 with an unusable body [0]"},
    {"spike-prob", "probability of an added latency spike [0]"},
    {"spike-ms", "length of a latency spike, ms [1000]"},
    {"retry-after-s", "Retry-After seconds on injected 429s [1]"},
    {"fault-seed", "seed of the fault RNG [1]"},
    {"help", "print this text"},
};

Status GetDouble(const Flags& flags, const std::string& name, double* out) {
  if (!flags.Has(name)) return Status::Ok();
  std::string text = flags.Get(name);
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || !std::isfinite(v))
    return InvalidArgument("--" + name + ": not a number: '" + text + "'");
  *out = v;
  return Status::Ok();
}

template <typename Int>
Status GetInteger(const Flags& flags, const std::string& name, Int* out) {
  if (!flags.Has(name)) return Status::Ok();
  std::string text = flags.Get(name);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0)
    return InvalidArgument("--" + name + ": not an integer: '" + text + "'");
  *out = static_cast<Int>(v);
  return Status::Ok();
}

Status CheckProbability(const char* name, double p) {
  if (p < 0.0 || p > 1.0)
    return InvalidArgument(std::string("--") + name + " must be in [0, 1], got " + std::to_string(p));
  return Status::Ok();
}

}  // namespace

StatusOr<SimConfig> ParseSimConfig(int argc, char** argv, bool* help) {
  std::set<std::string> known;
  for (const auto& f : kFlagDocs) known.insert(f.name);
  MATRIX_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(argc, argv, known, {"help"}));
  if (!flags.positional().empty())
    return InvalidArgument("unexpected argument '" + flags.positional().front() + "'");
  *help = flags.GetBool("help");

  SimConfig c;
  c.listen = flags.Get("listen", c.listen);
  c.port_file = flags.Get("port-file", c.port_file);
  c.run_dir = flags.Get("run-dir", c.run_dir);
  c.name = flags.Get("name", c.name);
  c.metrics = flags.Get("metrics", c.metrics);
  c.model_name = flags.Get("model-name", c.model_name);
  c.log_level = flags.Get("log-level", c.log_level);
  c.answer_mode = flags.Get("answer-mode", c.answer_mode);
  MATRIX_RETURN_IF_ERROR(GetInteger(flags, "max-model-len", &c.max_model_len));
  MATRIX_RETURN_IF_ERROR(GetInteger(flags, "threads", &c.threads));
  MATRIX_RETURN_IF_ERROR(GetInteger(flags, "slots", &c.slots));
  MATRIX_RETURN_IF_ERROR(GetInteger(flags, "fault-seed", &c.fault_seed));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "step-ms", &c.step_ms));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "step-ms-per-seq", &c.step_ms_per_seq));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "prefill-tokens-per-s", &c.prefill_tokens_per_s));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "mean-output-tokens", &c.mean_output_tokens));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "tail-alpha", &c.tail_alpha));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "speed", &c.speed));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "agree-prob", &c.agree_prob));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "tool-call-prob", &c.tool_call_prob));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "text-after-tool-prob", &c.text_after_tool_prob));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "parallel-tool-prob", &c.parallel_tool_prob));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "user-stop-prob", &c.user_stop_prob));
  MATRIX_RETURN_IF_ERROR(GetInteger(flags, "user-max-turns", &c.user_max_turns));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "invalid-json-prob", &c.invalid_json_prob));
  c.ignore_seed = flags.GetBool("ignore-seed");
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "fault-429", &c.fault_429));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "fault-500", &c.fault_500));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "fault-503", &c.fault_503));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "fault-hang", &c.fault_hang));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "fault-drop", &c.fault_drop));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "fault-malformed", &c.fault_malformed));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "spike-prob", &c.spike_prob));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "spike-ms", &c.spike_ms));
  MATRIX_RETURN_IF_ERROR(GetDouble(flags, "retry-after-s", &c.retry_after_s));
  if (*help) return c;
  MATRIX_RETURN_IF_ERROR(ValidateSimConfig(c));
  return c;
}

Status ValidateSimConfig(const SimConfig& c) {
  if (c.listen.find(':') == std::string::npos)
    return InvalidArgument("--listen must be host:port, got '" + c.listen + "'");
  if (!c.run_dir.empty() && c.name.empty()) return InvalidArgument("--name must not be empty");
  if (!c.metrics.empty() && c.metrics.find(':') == std::string::npos)
    return InvalidArgument("--metrics must be host:port or empty, got '" + c.metrics + "'");
  if (c.model_name.empty()) return InvalidArgument("--model-name must not be empty");
  if (c.max_model_len < 2) return InvalidArgument("--max-model-len must be >= 2");
  if (c.threads < 1 || c.threads > 256) return InvalidArgument("--threads must be in [1, 256]");
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warn" &&
      c.log_level != "error")
    return InvalidArgument("--log-level must be debug, info, warn or error");
  if (c.slots < 1) return InvalidArgument("--slots must be >= 1");
  if (c.step_ms < 0 || c.step_ms_per_seq < 0) return InvalidArgument("step times must be >= 0");
  if (c.step_ms + c.step_ms_per_seq <= 0)
    return InvalidArgument("--step-ms + --step-ms-per-seq must be > 0");
  if (c.prefill_tokens_per_s <= 0) return InvalidArgument("--prefill-tokens-per-s must be > 0");
  if (c.mean_output_tokens < 1) return InvalidArgument("--mean-output-tokens must be >= 1");
  if (c.tail_alpha <= 1.0)
    return InvalidArgument("--tail-alpha must be > 1 (the mean is infinite otherwise)");
  if (c.speed <= 0) return InvalidArgument("--speed must be > 0");
  if (c.answer_mode != "mc" && c.answer_mode != "none")
    return InvalidArgument("--answer-mode must be mc or none");
  MATRIX_RETURN_IF_ERROR(CheckProbability("agree-prob", c.agree_prob));
  MATRIX_RETURN_IF_ERROR(CheckProbability("tool-call-prob", c.tool_call_prob));
  MATRIX_RETURN_IF_ERROR(CheckProbability("text-after-tool-prob", c.text_after_tool_prob));
  MATRIX_RETURN_IF_ERROR(CheckProbability("parallel-tool-prob", c.parallel_tool_prob));
  MATRIX_RETURN_IF_ERROR(CheckProbability("user-stop-prob", c.user_stop_prob));
  if (c.user_max_turns < 0) return InvalidArgument("--user-max-turns must be >= 0");
  MATRIX_RETURN_IF_ERROR(CheckProbability("invalid-json-prob", c.invalid_json_prob));
  MATRIX_RETURN_IF_ERROR(CheckProbability("fault-429", c.fault_429));
  MATRIX_RETURN_IF_ERROR(CheckProbability("fault-500", c.fault_500));
  MATRIX_RETURN_IF_ERROR(CheckProbability("fault-503", c.fault_503));
  MATRIX_RETURN_IF_ERROR(CheckProbability("fault-hang", c.fault_hang));
  MATRIX_RETURN_IF_ERROR(CheckProbability("fault-drop", c.fault_drop));
  MATRIX_RETURN_IF_ERROR(CheckProbability("fault-malformed", c.fault_malformed));
  MATRIX_RETURN_IF_ERROR(CheckProbability("spike-prob", c.spike_prob));
  if (c.spike_ms < 0) return InvalidArgument("--spike-ms must be >= 0");
  if (c.retry_after_s < 0) return InvalidArgument("--retry-after-s must be >= 0");
  return Status::Ok();
}

std::string SimUsage() {
  std::ostringstream out;
  out << "matrix-llm-sim: an OpenAI-compatible server that behaves like a GPU serving engine.\n"
         "Usage: matrix-llm-sim [--flag value]...\n";
  for (const auto& f : kFlagDocs) {
    std::string name = std::string("  --") + f.name;
    out << name << std::string(name.size() < 26 ? 26 - name.size() : 1, ' ') << f.doc << "\n";
  }
  return out.str();
}

}  // namespace matrix::llm_sim
