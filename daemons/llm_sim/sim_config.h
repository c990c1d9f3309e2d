// SimConfig: every knob of matrix-llm-sim, one field per command-line flag,
// each with its default. Parsed and validated in one place (ParseSimConfig);
// the engine, the content model and the HTTP server read it and never change it.
// Thread-safety: a value type; share it read-only.
#pragma once

#include <cstdint>
#include <string>

#include "common/base/status.h"

namespace matrix::llm_sim {

struct SimConfig {
  // --- Serving ---
  // "host:port" to bind; port 0 picks an ephemeral port (read it from port_file).
  std::string listen = "127.0.0.1:0";
  // When non-empty, the bound "host:port" is written here atomically after bind.
  std::string port_file;
  // When non-empty, "http://host:port/v1" is written to <run_dir>/endpoints/<name>.
  std::string run_dir;
  std::string name = "llm-sim";
  // "host:port" serving GET /metrics (SimMetrics; port 0: ephemeral), published
  // in <run_dir>/endpoints/<name>.metrics; empty: metrics are not served.
  std::string metrics = "127.0.0.1:0";
  // Model id served by /v1/models and echoed when a request names no model.
  std::string model_name = "sim";
  // Prompt tokens + requested completion tokens may not exceed this (HTTP 400 otherwise).
  int64_t max_model_len = 32768;
  // Event-loop threads. 1 (default) runs everything on one thread.
  int threads = 1;
  // debug | info | warn | error.
  std::string log_level = "info";

  // --- Engine: continuous batching on a simulated accelerator ---
  // Batch slots: sequences decoding (or prefilling) at once; the rest wait in FIFO order.
  int slots = 256;
  // One engine step emits one token for every decoding sequence and lasts
  // step_ms + step_ms_per_seq * (decoding sequences) milliseconds.
  double step_ms = 8.0;
  double step_ms_per_seq = 0.02;
  // Prefill throughput shared by all admitted sequences (tokens per second).
  double prefill_tokens_per_s = 50000.0;
  // Output length: Lomax (Pareto type II) draw with this mean and shape; the
  // shape must be > 1, smaller means a heavier tail.
  double mean_output_tokens = 120.0;
  double tail_alpha = 2.0;
  // Divides every simulated duration (steps, prefill, spikes): 10 runs ten times faster.
  double speed = 1.0;

  // --- Content ---
  // "mc": every text ends with "The answer is (X)."; "none": filler text only.
  std::string answer_mode = "mc";
  // Probability of repeating the latest "answer is (Y)" found in the conversation
  // (temperature 0 always repeats it).
  double agree_prob = 0.6;
  // Probability of answering with a tool call when the request offers tools
  // (tool_choice "auto" or absent) and the last message is not a tool result;
  // "required" and a named function always call. The arguments satisfy the
  // function's `parameters` schema, with identifiers (order_id, user_id,
  // item_ids, email, payment_method_id, zip, ...) taken from earlier user and
  // tool messages.
  double tool_call_prob = 0.3;
  // When the last message is a tool result: probability of answering with text
  // rather than with another tool call (tool_choice "auto").
  double text_after_tool_prob = 0.8;
  // Probability that a tool-call answer carries 2 or 3 calls instead of one,
  // when the request allows parallel tool calls (parallel_tool_calls not false)
  // and names no single function in tool_choice.
  double parallel_tool_prob = 0.1;
  // Playing a Tau2-bench-style user: requests whose system message contains
  // "###STOP###" and that offer no tools. Such replies mention the identifiers
  // of the system prompt's scenario (name, zip, email, user id, order ids), carry
  // no multiple-choice answer sentence, and end with " ###STOP###" with
  // probability user_stop_prob from the second reply on, and always once the
  // conversation holds user_max_turns or more earlier replies of the user
  // (messages with role "assistant").
  double user_stop_prob = 0.2;
  int user_max_turns = 12;
  // Structured output (response_format json_object or json_schema): probability
  // that a reply is deliberately broken, cut short (not JSON) or, for a schema
  // with required properties, missing one (JSON that fails the schema), so that
  // clients can exercise their retries. Drawn from the request seed.
  double invalid_json_prob = 0.0;
  // Draws depend on the messages only: two orchestrators sending the same
  // conversations (seeded or not) get the same workload, compared side by side.
  bool ignore_seed = false;

  // --- Fault injection: independent per-request probabilities in [0, 1] ---
  double fault_429 = 0.0;        // 429 with Retry-After
  double fault_500 = 0.0;        // 500 with an error body
  double fault_503 = 0.0;        // 503 with an error body
  double fault_hang = 0.0;       // never answer; hold the connection until the client leaves
  double fault_drop = 0.0;       // close the connection without a response
  double fault_malformed = 0.0;  // 200 whose body is not valid JSON or lacks "choices"
  double spike_prob = 0.0;       // add spike_ms of latency before the request is queued
  double spike_ms = 1000.0;
  // Value of the Retry-After header (seconds) on injected 429s; not scaled by speed.
  double retry_after_s = 1.0;
  // Seed of the process-level fault RNG: the same seed and request order give the same faults.
  uint64_t fault_seed = 1;
};

// Parses argv (flags named as the fields above with '-' for '_', e.g.
// --step-ms-per-seq) into a validated config. InvalidArgument names the
// offending flag; `*help` is set when --help was given.
StatusOr<SimConfig> ParseSimConfig(int argc, char** argv, bool* help);

// InvalidArgument when a value is out of range (slots < 1, a probability
// outside [0, 1], tail_alpha <= 1, speed <= 0, ...).
Status ValidateSimConfig(const SimConfig& config);

// One-line-per-flag usage text.
std::string SimUsage();

}  // namespace matrix::llm_sim
