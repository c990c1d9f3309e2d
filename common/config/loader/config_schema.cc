// The known keys of each section of a pipeline file.
#include "common/config/loader/config_schema.h"

#include <algorithm>

namespace matrix::config::loader_internal {

const std::vector<std::string> kTopKeys = {"name", "description", "params", "simulator", "dataset",
                                           "run", "models", "roles", "flow"};
const std::vector<std::string> kDatasetKeys = {"path", "limit", "partitions", "id_field",
                                               "required_fields"};
const std::vector<std::string> kRunKeys = {"max_concurrent_tasks", "schedule", "trials", "max_attempts",
                                           "offload_threshold_bytes", "output_dir", "output_compression", "workers",
                                           "task_timeout_s", "seed", "records", "max_steps_in_place"};
const std::vector<std::string> kModelKeys = {"endpoints", "model", "api_key_env", "api_key_file",
                                             "max_concurrency_per_endpoint", "timeout_s",
                                             "outage_s", "patience_factor", "max_retries", "breaker_cooldown_s", "requests_per_s", "sticky", "sampling",
                                             "logprobs", "top_logprobs", "token_ids", "price"};
const std::vector<std::string> kPriceKeys = {"input_per_million", "output_per_million", "currency"};
const std::vector<std::string> kRoleCommonKeys = {"type", "concurrency"};
const std::vector<std::pair<RoleType, std::vector<std::string>>> kRoleTypeKeys = {
    {RoleType::kLlm,
     {"model", "system", "prompt", "conversation", "sampling", "tools", "tools_from", "tool_choice",
      "response_format", "format_retries"}},
    {RoleType::kExtract, {"from", "regex", "json", "fields", "var", "ignore_case"}},
    {RoleType::kCompare, {"left", "right", "var", "ignore_case"}},
    {RoleType::kFilter, {"condition"}},
    {RoleType::kTool, {"command", "sandbox", "image", "timeout_s", "network", "memory_mb", "cpu_s", "max_processes",
                       "max_file_mb", "max_sessions", "max_tool_calls", "idle_timeout_s", "environment"}},
    {RoleType::kExec, {"command", "sandbox", "image", "timeout_s", "network", "memory_mb", "cpu_s", "max_processes",
                       "max_file_mb", "input", "var", "environment"}},
    {RoleType::kReward, {"expr", "var", "env", "agent", "termination"}},
    {RoleType::kNoop, {}},
    {RoleType::kMessage, {"content", "as"}},
};
const std::vector<std::string> kFlowKeys = {"start", "max_steps", "max_tokens", "steps"};
const std::vector<std::string> kStepKeys = {"role", "next", "fanout", "set"};
const std::vector<std::string> kRuleKeys = {"if", "goto", "reason"};
const std::vector<std::string> kFanoutKeys = {"branches", "count",  "branch", "join", "first",
                                               "deadline_s", "value", "score", "combine", "var"};

std::vector<std::string> AllRoleKeys() {
  std::vector<std::string> out = kRoleCommonKeys;
  for (const auto& [type, keys] : kRoleTypeKeys) {
    for (const auto& k : keys) {
      if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
    }
  }
  return out;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Whether the format knows the key at `parts` (a dotted path split up), so an
// override may create it without '+'. Free-form maps (params, sampling, set)
// accept any key.
bool SchemaKnows(const std::vector<std::string>& parts) {
  const size_t n = parts.size();
  if (n == 0) return false;
  const std::string& top = parts[0];
  if (n == 1) return Contains(kTopKeys, top);
  if (top == "params" || top == "simulator") return true;
  if (top == "dataset") return n == 2 && Contains(kDatasetKeys, parts[1]);
  if (top == "run") return n == 2 && Contains(kRunKeys, parts[1]);
  if (top == "models") {
    if (n == 3) return Contains(kModelKeys, parts[2]);
    if (n == 4 && parts[2] == "price") return Contains(kPriceKeys, parts[3]);
    return n >= 4 && parts[2] == "sampling";
  }
  if (top == "roles") {
    if (n == 3) return Contains(AllRoleKeys(), parts[2]);
    return n >= 4 && (parts[2] == "sampling" || parts[2] == "fields" || parts[2] == "environment" ||
                      parts[2] == "response_format");
  }
  if (top == "flow") {
    if (n == 2) return Contains(kFlowKeys, parts[1]);
    if (parts[1] != "steps") return false;
    if (n == 4) return Contains(kStepKeys, parts[3]);
    if (n == 5 && parts[3] == "fanout") return Contains(kFanoutKeys, parts[4]);
    return n == 5 && parts[3] == "set";
  }
  return false;
}

// Schema keys that could follow `prefix`, for suggestions.
std::vector<std::string> SchemaCandidates(const std::vector<std::string>& prefix) {
  std::vector<std::string> out;
  std::vector<std::string> all = kTopKeys;
  for (const auto* list :
       {&kDatasetKeys, &kRunKeys, &kModelKeys, &kPriceKeys, &kFlowKeys, &kStepKeys, &kFanoutKeys}) {
    all.insert(all.end(), list->begin(), list->end());
  }
  for (const auto& k : AllRoleKeys()) all.push_back(k);
  for (const auto& k : all) {
    std::vector<std::string> p = prefix;
    p.push_back(k);
    if (SchemaKnows(p)) out.push_back(k);
  }
  return out;
}

}  // namespace matrix::config::loader_internal
