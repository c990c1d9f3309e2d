// The simulator's content model: parses OpenAI-style completion requests,
// decides each response (length, text, multiple-choice answer, tool call) from
// a per-request seed, and renders vLLM-shaped JSON and SSE bodies.
//
// Tool calls: when a request offers tools, the reply may be one call (or, when
// parallel calls are allowed, two or three) whose arguments satisfy the
// function's parameters schema, with identifiers taken from the conversation
// (sim_tools.h). Playing a user: a request whose system message contains
// "###STOP###" and that offers no tools is answered as a Tau2-bench user would:
// the reply mentions the scenario's identifiers and sometimes (always after
// SimConfig::user_max_turns turns) ends with " ###STOP###".
//
// Structured output: "response_format" {"type": "json_object"} makes the reply
// one JSON object (a few keys with filler strings, numbers and booleans);
// {"type": "json_schema", "json_schema": {"name", "schema"}} makes it JSON
// that satisfies the schema (ValueForSchema in sim_tools.h). The JSON is split
// into completion tokens like tool-call arguments, so max_tokens can cut it
// (finish_reason "length", invalid JSON); SimConfig::invalid_json_prob breaks
// some replies on purpose. Such replies carry no multiple-choice answer; a
// planned tool call still takes precedence.
//
// Logprobs: "logprobs": true (chat) with "top_logprobs" N, or "logprobs": N
// (text completions), give every completion token a logprob <= 0 and N
// alternatives sorted by logprob; "return_token_ids": true adds vLLM's
// token_ids (a hash of each token into the Llama 3 vocabulary) and
// prompt_token_ids. A tool call's header token stands for the function name.
//
// Determinism: the request seed is Hash64 of the canonical messages JSON (or
// of the prompt); when the request carries "seed", that value seeds the hash,
// so the same seed and messages give the same response while different
// conversations under one seed still differ (as with OpenAI's "seed").
//
// Thread-safety: free functions over value types; no shared state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/base/json.h"
#include "common/base/status.h"
#include "daemons/llm_sim/sim_config.h"
#include "daemons/llm_sim/sim_rng.h"

namespace matrix::llm_sim {

enum class ApiKind { kChat, kText };  // /v1/chat/completions, /v1/completions

struct ChatMessage {
  std::string role;
  std::string content;  // text parts joined; empty for null content
};

struct ToolSpec {
  std::string name;
  Json parameters;  // JSON schema (object), may be null
};

enum class ToolChoice { kAuto, kNone, kRequired };

enum class ResponseFormat { kText, kJsonObject, kJsonSchema };

// Vocabulary size of the token ids the simulator reports (Llama 3's).
inline constexpr int64_t kVocabularySize = 128256;

// Most alternatives per token ("top_logprobs"), as vLLM's default max_logprobs.
inline constexpr int64_t kMaxTopLogprobs = 20;

struct CompletionRequest {
  ApiKind kind = ApiKind::kChat;
  std::string model;                  // as requested, else the served model name
  std::vector<ChatMessage> messages;  // text completions: one "user" message with the prompt
  std::vector<ToolSpec> tools;
  ToolChoice tool_choice = ToolChoice::kAuto;
  std::string forced_tool;  // tool_choice naming one function
  bool parallel_tool_calls = true;  // "parallel_tool_calls"; false allows one call per reply
  // Ids of the tool calls already in the conversation (assistant tool_calls and
  // tool messages' tool_call_id); new calls never reuse one.
  std::vector<std::string> prior_tool_call_ids;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::optional<int64_t> max_tokens;  // max_completion_tokens, else max_tokens
  int64_t min_tokens = 0;
  bool ignore_eos = false;
  std::optional<double> temperature;
  uint64_t seed = 0;
  int64_t prompt_tokens = 0;
  ResponseFormat response_format = ResponseFormat::kText;
  Json response_schema;  // json_schema.schema; null for json_object
  bool logprobs = false;
  int64_t top_logprobs = 0;  // alternatives per token, 0..kMaxTopLogprobs
  bool return_token_ids = false;
  // The prompt's token ids when a text completion's prompt was given as ids and
  // return_token_ids is set; otherwise prompt_token_ids are derived from the seed.
  std::vector<int64_t> prompt_ids;
};

// One tool call of a plan: pieces [first, end) of the plan; piece `first` is
// the call's header (empty), the rest are fragments of its arguments.
struct PlannedToolCall {
  std::string id;  // "call_" + 24 hex digits, unique in the conversation
  std::string name;
  int64_t first = 0;
  int64_t end = 0;
};

// What one response will say, one piece per completion token, stored as one
// string plus the end offset of each piece (a queued request costs a few bytes
// per token). Text plans: the pieces concatenate to the content. Tool plans:
// the calls' pieces one after another (see PlannedToolCall).
struct CompletionPlan {
  std::string text;             // content, or the arguments of the tool calls one after another
  std::vector<uint32_t> ends;   // ends[i]: end offset of piece i in `text`
  bool tool_call = false;       // true when `calls` is not empty
  std::vector<PlannedToolCall> calls;
  std::string finish_reason;  // "stop" | "length" | "tool_calls"
  char answer = 0;            // letter in "The answer is (X).", 0 when none
  bool structured = false;    // JSON for response_format json_object / json_schema
  bool broken = false;        // structured and broken on purpose (invalid_json_prob)

  int64_t completion_tokens() const { return static_cast<int64_t>(ends.size()); }
  const std::string& Text() const { return text; }
  // Concatenation of pieces [from, to), clamped to the plan.
  std::string_view Pieces(int64_t from, int64_t to) const;
  void AddPiece(std::string_view piece);
  // The arguments JSON of calls[i].
  std::string_view Arguments(size_t i) const { return Pieces(calls[i].first + 1, calls[i].end); }
};

struct ResponseMeta {
  std::string id;  // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;
};

// About one token per 4 characters, at least 1.
int64_t CountTokens(size_t chars);

// Parses and validates a request body. InvalidArgument (HTTP 400) for invalid
// JSON, missing or mistyped fields (the message names the field, e.g.
// 'response_format.type'), schemas that do not compile, top_logprobs outside
// [0, 20], and prompts that do not fit max_model_len (the message then
// contains "maximum context length", as vLLM's does).
StatusOr<CompletionRequest> ParseCompletionRequest(ApiKind kind, std::string_view body,
                                                   const SimConfig& config);

// Decides the response. Deterministic in (request, config).
CompletionPlan PlanCompletion(const CompletionRequest& request, const SimConfig& config);

// The marker a Tau2-bench user writes to end the conversation.
inline constexpr std::string_view kUserStopToken = "###STOP###";

// True when the simulator answers as a user simulator: a chat request without
// tools whose system (or developer) message contains kUserStopToken.
bool PlaysUser(const CompletionRequest& request);

// Lomax (Pareto II) draw, rounded, >= 1, with the given mean and shape (> 1).
int64_t SampleOutputTokens(SimRng* rng, double mean, double alpha);

// The letter of the last option found as a line starting "A." / "A)" / "(A)" /
// "A:" when the options run A, B, C...; 'J' when no such run exists.
char LastOptionLetter(const std::vector<ChatMessage>& messages);

// The latest "answer is (Y)" / "answer is Y" with Y in A..last_letter,
// scanning messages from the newest; nullopt when none.
std::optional<char> FindPreviousAnswer(const std::vector<ChatMessage>& messages, char last_letter);

// Appends `count` filler pieces to `plan`: sentences of ordinary English
// words, one word per piece. The first piece of a plan has no leading space;
// the last filler piece ends a sentence.
void AppendFiller(SimRng* rng, int64_t count, CompletionPlan* plan);

std::string ResponseIdPrefix(ApiKind kind);

// Token id of a completion piece: a hash of its text into [0, kVocabularySize).
int64_t TokenId(std::string_view piece);

// The logprob of completion token `index` of a reply with seed `seed`, and its
// `top` most likely alternatives sorted by logprob, descending (the token
// itself among them when it ranks that high). Every logprob is <= 0 and their
// probabilities sum to at most 1.
struct TokenLogprob {
  std::string token;
  double logprob = 0;
  std::vector<std::pair<std::string, double>> top;
};
TokenLogprob LogprobFor(uint64_t seed, int64_t index, std::string_view token, int64_t top);

// Complete JSON body of a non-streaming response.
std::string RenderCompletion(const CompletionRequest& request, const CompletionPlan& plan,
                             const ResponseMeta& meta);

// SSE events ("data: {...}\n\n") of a streaming response. Tokens() covers
// completion tokens [from, to), with their logprobs and token ids when the
// request asked; the first call also sends the assistant role (and, asked,
// the prompt's token ids).
// Finish() sends the finish_reason chunk, the usage chunk when asked, and
// "data: [DONE]".
class StreamRenderer {
 public:
  StreamRenderer(const CompletionRequest* request, const CompletionPlan* plan, ResponseMeta meta);
  std::string Tokens(int64_t from, int64_t to);
  std::string Finish();

 private:
  // `,"logprobs":...` and, when asked, `,"token_ids":[...]` of tokens [from, to).
  std::string TokenFields(int64_t from, int64_t to) const;

  const CompletionRequest* request_;
  const CompletionPlan* plan_;
  ResponseMeta meta_;
  std::string prefix_;  // `data: {"id":..,"object":..,"created":..,"model":..,`
  std::string head_;    // prefix_ + `"choices":[{"index":0,`
  bool role_sent_ = false;
  bool prompt_ids_sent_ = false;
};

// A 200 body that a client cannot use: `variant` 0 is truncated JSON, 1 is
// well-formed JSON without "choices". Streaming bodies are SSE with the same defect.
std::string RenderMalformed(const CompletionRequest& request, const CompletionPlan& plan,
                            const ResponseMeta& meta, int variant);

// {"error":{"message":..,"type":..,"param":null,"code":code}}
std::string RenderError(int code, const std::string& type, const std::string& message);

// GET /v1/models body.
std::string RenderModels(const SimConfig& config, int64_t created);

}  // namespace matrix::llm_sim
