// A pipeline definition as plain structs: what pipeline_loader.h produces from
// YAML and what sources, workers and sinks read. Every field of the YAML
// format is listed here with its default.
//
// File format (all keys optional unless marked REQUIRED):
//
//   defaults: [base.yaml, models/sim.yaml]  # files merged first, in order; paths are
//                                 # relative to this file (".yaml" may be left out);
//                                 # each may have its own defaults. Maps merge key by
//                                 # key, anything else (lists too) is replaced. This
//                                 # file goes on top, or where `_self_` is listed.
//   name: coral                   # default: the file name without extension
//   description: ""               # free text
//   params: {}                    # free-form values for ${params.x} interpolation
//   simulator: {}                 # settings for the local simulator that `matrix run`
//                                 # starts for models with endpoints [sim] (free-form;
//                                 # read from Pipeline::merged)
//   dataset:
//     path: data/q.jsonl          # REQUIRED. JSONL (optionally .zst) file or folder;
//                                 # relative to the file that sets it (or to the
//                                 # working directory when set by an override);
//                                 # stored as an absolute path. Must exist.
//     limit: 0                    # rows to use; 0 = all
//     partitions: 1               # data partitions (one source each)
//     id_field: ""                # row field used in the stable task id ("" = row number)
//     required_fields: []         # rows missing one of these end as failed
//   run:
//     max_concurrent_tasks: 1000  # tasks in flight per partition
//     schedule: row               # row: a finished task's slot is refilled at once;
//                                 # batch: the next batch waits for the whole last one
//     records: all                # all | done: only tasks that ended done get their record
//                                 # in p<N>.jsonl; the others a short line in dropped-p<N>.jsonl
//     trials: 1                   # runs of each row (distinct task ids and seeds)
//     max_attempts: 3             # deliveries of a task before it is written as lost
//     offload_threshold_bytes: 512  # content above this goes to the object store
//     output_dir: runs/<name>     # relative to the working directory
//     output_compression: none    # none: records in p<N>.jsonl; zstd: p<N>.jsonl.zst,
//                                 # one zstd frame per record (README)
//     workers: 1                  # worker processes per node
//     task_timeout_s: 3600        # a task running longer ends as failed
//     seed: 0                     # base of the per-task seeds
//     max_steps_in_place: 32      # steps a worker that serves the next step's role runs
//                                 # at once, without a hop through the broker: local steps
//                                 # and LLM steps without tools; 0: every step hops
//   models:
//     <model>:
//       endpoints: [sim]          # REQUIRED. http(s) base URLs like http://10.0.0.5:8000/v1,
//                                 # or the single word "sim": `matrix run` starts a simulator
//       model: ""                 # REQUIRED. model name sent in requests
//       api_key_env: ""           # env var holding a bearer token
//       api_key_file: ""          # owner-only file holding the token (relative to the
//                                 # file that sets it); at most one of the two
//       max_concurrency_per_endpoint: 256
//       timeout_s: 120            # per request
//       outage_s: 600             # while no endpoint can be reached, requests wait this long
//                                 # (connection failures use no retries), then fail
//       patience_factor: 8        # an attempt waits at most this times the endpoint's mean
//                                 # answer time, and at least twice its longest answer of late
//                                 # (>= 3 s, doubling per retry, <= timeout_s); 0: timeout_s
//       max_retries: 4            # on 429 / 5xx / timeouts
//       breaker_cooldown_s: 10    # an endpoint whose circuit breaker opened (5 failures in
//                                 # a row) rests this long, then gets a health probe (and
//                                 # another every breaker_cooldown_s until one succeeds)
//       requests_per_s: 0         # client-side rate limit per endpoint; 0 = none
//       sticky: false             # route a task's calls to the same endpoint
//       sampling: {}              # merged into the request body (temperature, max_tokens...)
//       logprobs: false           # ask for the log-probability of every completion token;
//       top_logprobs: 0           #   and of this many alternatives (0..20); kept per turn in
//                                 #   the record (extra.logprobs / extra.top_logprobs)
//       token_ids: false          # ask for token ids (vLLM's return_token_ids): extra.token_ids
//       price:                    # optional; what `matrix run`, `matrix status` and
//                                 # summary.json report as cost (never sent anywhere)
//         input_per_million: 0.15   # REQUIRED in a price: per million prompt tokens, >= 0
//         output_per_million: 0.60  # REQUIRED in a price: per million completion tokens, >= 0
//         currency: USD             # the same for every priced model of a pipeline
//   roles:
//     <role>:
//       type: llm                 # REQUIRED: llm | extract | compare | filter | tool |
//                                 #           exec | reward | noop
//       concurrency: 1000         # tasks of this role in flight per worker
//       # llm
//       model: <model>            # REQUIRED, a key of `models`
//       system: ""                # system prompt template (template.h)
//       prompt: ""                # first user message template
//       conversation: true        # turns are part of the visible conversation
//       sampling: {}              # merged over the model's sampling
//       tools: []                 # OpenAI tool (function) definitions, passed as-is
//       # extract (exactly one of regex / json)
//       from: last.content        # expression giving the text
//       regex: ""                 # RE2 pattern (regex.h): of the last match, the first
//                                 # capture group (or the whole match) -> var
//       json: false               # parse the text as JSON ...
//       fields: {}                # ... and set var name -> dotted path in the parsed object
//                                 # ("overall", "scores.math", "items.0.text")
//       var: ""                   # REQUIRED for regex; for json: the whole object
//       ignore_case: false        # case-insensitive regex
//       # compare
//       left: ""                  # REQUIRED expression
//       right: ""                 # REQUIRED expression
//       var: ""                   # REQUIRED: receives the bool result
//       ignore_case: false        # compare strings case-insensitively
//       # filter
//       condition: ""             # REQUIRED expression: keep the task when true,
//                                 # otherwise it ends as filtered
//       tools_from: ""            # a tool role: its environment's tools (MCP tools/list)
//                                 # are offered too, in OpenAI function format
//       tool_choice: auto         # auto | none | required | a tool name (sent as given)
//       response_format:          # structured output, sent to the server as given:
//         type: json_schema       #   text | json_object | json_schema
//         json_schema: {name: verdict, schema: {...}, strict: true}
//                                 #   (or `schema:` directly under response_format).
//                                 #   The schema must be valid JSON Schema; each answer
//                                 #   must parse as JSON (and match the schema), else
//       format_retries: 2         #   the call is asked again this many times, then the
//                                 #   task ends failed (invalid_output) with the answer
//       # tool: runs every tool call of the last turn in the task's environment
//       #   (an MCP server over stdio, one sandboxed session per task; README)
//       # exec: a one-shot program; JSON in on stdin ({input, vars, counters, task}
//       #   or `input`), a JSON object out on stdout, merged into vars (or into `var`)
//       command: []               # REQUIRED argv (tool, exec)
//       sandbox: bwrap            # bwrap | apptainer | none (none: a plain process, warned)
//       image: ""                 # apptainer image (REQUIRED with sandbox: apptainer)
//       network: false            # the sandbox has no network unless true
//       memory_mb: 1024           # address-space limit
//       cpu_s: 0                  # CPU-seconds limit of the process; 0 = none
//       max_processes: 64         # processes and threads inside the sandbox
//       max_file_mb: 256          # largest file the program may write
//       timeout_s: 30             # wall clock per call (tool) or run (exec); then killed
//       environment: {}           # extra environment variables of the program; "{workdir}"
//                                 # in a value is its private writable folder
//       max_sessions: 1000        # tool: live sessions per node; admission waits beyond
//       max_tool_calls: 200       # tool: per task; more ends the task (max_tool_calls)
//       idle_timeout_s: 3600      # tool: a session unused this long is closed
//       input: ""                 # exec: expression giving the JSON sent on stdin
//       var: ""                   # exec: store the whole output here instead of merging
//       # message: appends a fixed turn without calling a model (a greeting)
//       content: ""               # REQUIRED template of the text
//       as: <role>                # whose turn it is (default: this role); an llm
//                                 # role sees it as its own, the others as user
//       # reward (exactly one of expr / env)
//       expr: ""                  # expression, stored in vars.<var>
//       env: ""                   # or a tool role: its environment's matrix/reward
//                                 # (README) scores the episode; vars.<var> and
//                                 # vars.<var>_info (the breakdown)
//       agent: ""                 # env: the llm role sent as "assistant" (others "user")
//       termination: ""           # env: expression giving the termination reason
//       var: reward
//   flow:
//     start: <step>               # REQUIRED
//     max_steps: 200              # steps per task before it ends as failed
//     max_tokens: 0               # prompt + completion tokens per task, its branches
//                                 # included; beyond it the task ends (token_budget).
//                                 # Each branch gets an equal share of what is left.
//     steps:
//       <step>:
//         role: <role>            # REQUIRED unless the step has `fanout`
//         next: <target>          # default: done. A step name or a terminal: done |
//                                 # failed | filtered, and `join` inside fan-out branches.
//         next:                   # or ordered rules; the first whose `if` holds wins;
//           - if: "vars.agreement"  # a rule without `if` always holds
//             goto: done
//             reason: agreement   # termination reason recorded in the output
//           - goto: teacher
//         set: {var: expr}        # assignments evaluated, in order, after the role ran
//         fanout:                 # a fan-out step runs no role; the task's owner starts
//                                 # its branches, each a task of its own (new conversation,
//                                 # the parent's input, vars and counters), on any worker:
//           branches: [a, b]      #   explicit branch start steps, or
//           count: 0              #   `count` copies of the step `branch`
//           branch: ""
//           first: 0              #   resume once this many branches ended `join`/`done`
//                                 #   (0: when every branch has ended)
//           deadline_s: 0         #   or once this long has passed; 0 = no deadline
//           value: last.content   #   expression on each ended branch: what it contributes
//           score: ""             #   numeric expression on each branch (combine: best)
//           combine: none         #   none | concat | vote | best: result in vars.<var>
//           var: combined
//           join: ""              #   step run once the branches are in (the aggregator;
//                                 #   it has no `next`); then this step's `next` applies
//                                 # A branch ends at `join`, done, failed or filtered (or
//                                 # lost); vars.branches lists every one: {index, status,
//                                 # reason, error, value, score, vars, tokens}; their turns
//                                 # join the parent's history (conversation: false).
//
// Strings anywhere may use ${a.b} (a value of the merged file; alone it keeps
// its type) and ${env:VAR} or ${env:VAR,default}; \${ is a literal "${".
//
// Expressions (expr.h) see the task as JSON: input (the row), vars, counters,
// last (the last turn) and history. Templates (template.h) see the same.
//
// Thread-safety: a loaded Pipeline is immutable; share it by const reference
// or shared_ptr<const Pipeline> across threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/base/json.h"
#include "common/base/json_schema.h"
#include "common/config/expr.h"
#include "common/config/regex.h"
#include "common/config/template.h"

namespace matrix::config {

// Step targets with a fixed meaning.
inline constexpr char kTargetDone[] = "done";
inline constexpr char kTargetFailed[] = "failed";
inline constexpr char kTargetFiltered[] = "filtered";
inline constexpr char kTargetJoin[] = "join";
// Whether `target` is one of the above rather than a step name.
bool IsTerminalTarget(const std::string& target);

struct DatasetConfig {
  std::string path;  // absolute
  int64_t limit = 0;
  int partitions = 1;
  std::string id_field;
  std::vector<std::string> required_fields;
};

struct RunConfig {
  int max_concurrent_tasks = 1000;
  // row: a finished task's slot goes to the next row at once. batch: admit
  // max_concurrent_tasks, wait until every one of them has finished, then
  // the next batch (what batch-synchronous scripts and Ray Data map_batches
  // do), for comparisons on identical settings.
  enum class Schedule { kRow, kBatch };
  Schedule schedule = Schedule::kRow;
  // all: every task's full record in p<N>.jsonl. done: only the tasks that
  // ended done there (the kept items of a curation); the others as short
  // lines (id, status, reason, error, vars, counters, usage) in
  // dropped-p<N>.jsonl, so that resume still knows them.
  enum class Records { kAll, kDone };
  Records records = Records::kAll;
  int trials = 1;
  int max_attempts = 3;
  int64_t offload_threshold_bytes = 512;
  std::string output_dir;  // "runs/<name>" when not set
  // zstd: each record is its own zstd frame in p<N>.jsonl.zst (a valid .zst
  // after every write, so durability and resume are those of plain lines).
  enum class OutputCompression { kNone, kZstd };
  OutputCompression output_compression = OutputCompression::kNone;
  int workers = 1;
  double task_timeout_s = 3600;
  uint64_t seed = 0;
  // A worker that serves the next step's role runs it in place, without a
  // hop through the broker, up to this many steps per delivery: local steps
  // (extract, compare, filter, noop, message, reward by expression) and LLM
  // steps without tools, while the role has room under its concurrency here.
  // A hop refreshes the broker's copy of the task, which a lost worker's
  // tasks resume from. 0 sends every step through the broker (the hop
  // benchmark measures that).
  int max_steps_in_place = 32;
};

// What a model's tokens cost (models.<name>.price).
struct PriceConfig {
  double input_per_million = 0;   // per million prompt tokens
  double output_per_million = 0;  // per million completion tokens
  std::string currency = "USD";
};

struct ModelConfig {
  std::string name;  // key under `models`
  std::vector<std::string> endpoints;
  std::string model;
  std::string api_key_env;
  std::string api_key_file;
  int max_concurrency_per_endpoint = 256;
  double timeout_s = 120;
  double outage_s = 600;
  double patience_factor = 8;
  int max_retries = 4;
  double breaker_cooldown_s = 10;
  double requests_per_s = 0;
  bool sticky = false;
  Json sampling = Json::object();
  bool logprobs = false;
  int top_logprobs = 0;
  bool token_ids = false;
  std::optional<PriceConfig> price;  // none: the model's cost is not reported

  // endpoints == ["sim"]
  bool simulated() const { return endpoints.size() == 1 && endpoints[0] == "sim"; }
};

enum class RoleType { kLlm, kExtract, kCompare, kFilter, kTool, kExec, kReward, kNoop, kMessage };
const char* RoleTypeName(RoleType type);

// Invariants (after loading): the optionals that a type REQUIRES are set;
// those of other types are empty.
struct RoleConfig {
  std::string name;  // key under `roles`
  RoleType type = RoleType::kNoop;
  int concurrency = 1000;

  // llm
  std::string model;
  std::optional<Template> system;
  std::optional<Template> prompt;
  bool conversation = true;
  Json sampling = Json::object();
  Json tools = Json::array();
  std::string tools_from;     // a tool role whose environment lists more tools
  Json tool_choice;           // null: not sent
  Json response_format;       // null: not sent; else as sent ({type: json_object | json_schema ...})
  std::shared_ptr<const JsonSchema> response_schema;  // json_schema: its schema, compiled
  int format_retries = 2;

  // extract
  std::optional<Expr> from;  // defaults to last.content
  std::string regex_source;
  std::optional<Regex> regex;
  bool json = false;
  std::map<std::string, std::string> fields;         // var -> dotted path in the parsed JSON
  std::string var;                                   // extract, compare, reward
  bool ignore_case = false;                          // extract (regex), compare

  // compare
  std::optional<Expr> left;
  std::optional<Expr> right;

  // filter
  std::optional<Expr> condition;

  // tool / exec
  std::vector<std::string> command;
  std::string sandbox = "bwrap";
  std::string image;
  double timeout_s = 30;
  bool network = false;
  int64_t memory_mb = 1024;
  int64_t cpu_s = 0;
  int64_t max_processes = 64;
  int64_t max_file_mb = 256;
  int max_sessions = 1000;
  int max_tool_calls = 200;
  double idle_timeout_s = 3600;
  std::optional<Expr> input;  // exec
  std::map<std::string, std::string> environment;

  // message
  std::optional<Template> content;
  std::string as;

  // reward
  std::optional<Expr> expr;
  std::string env;                  // a tool role (the environment's own reward)
  std::string agent;                // llm role sent as "assistant"
  std::optional<Expr> termination;  // reason handed to the environment
};

struct Transition {
  std::optional<Expr> cond;  // nullopt: always
  std::string target;        // a step name or a terminal target
  std::string reason;        // recorded when the task ends here; may be empty
};

struct SetVar {
  std::string var;
  Expr expr;
};

struct FanoutConfig {
  std::vector<std::string> branches;  // branch start steps, one branch each
  int count = 0;                      // or: `count` copies of `branch`
  std::string branch;
  std::string join;  // optional step run once after all branches ended
  int first = 0;          // resume after this many branches ended well; 0 = all ended
  double deadline_s = 0;  // resume after this long at the latest; 0 = none
  std::optional<Expr> value;  // per ended branch; default last.content
  std::optional<Expr> score;  // per ended branch, numeric
  enum class Combine { kNone, kConcat, kVote, kBest };
  Combine combine = Combine::kNone;
  std::string var = "combined";

  // The start step of every branch, in order (branches, or `branch` count times).
  std::vector<std::string> BranchStarts() const;
};

struct StepConfig {
  std::string name;  // key under flow.steps
  std::string role;  // empty for a fan-out step
  std::vector<Transition> next;
  std::optional<FanoutConfig> fanout;
  std::vector<SetVar> set;
};

struct FlowConfig {
  std::string start;
  int max_steps = 200;
  int64_t max_tokens = 0;  // per task, branches included; 0 = no budget
  std::map<std::string, StepConfig> steps;
  std::vector<std::string> step_order;  // as written in the file
};

struct Pipeline {
  std::string name;
  std::string description;
  DatasetConfig dataset;
  RunConfig run;
  std::map<std::string, ModelConfig> models;
  std::map<std::string, RoleConfig> roles;
  FlowConfig flow;
  Json merged;        // the whole configuration after composition, overrides and interpolation
  uint64_t hash = 0;  // Hash64 of the canonical JSON of models (without prices), roles and flow
  std::string source_path;  // absolute path of the top-level file

  // nullptr when there is no such step / role / model.
  const StepConfig* Step(const std::string& name) const;
  const RoleConfig* Role(const std::string& name) const;
  const ModelConfig* Model(const std::string& name) const;

  // The model's sampling with the role's sampling merged over it (JSON merge
  // patch semantics); empty object for roles without a model.
  Json SamplingFor(const RoleConfig& role) const;
};

// A short human summary (name, hash, dataset, models, roles and steps with
// their transitions) for `matrix validate`.
std::string DescribePipeline(const Pipeline& p);

}  // namespace matrix::config
