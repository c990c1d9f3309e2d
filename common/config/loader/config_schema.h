// The keys each section of a pipeline file knows: for "unknown key" errors
// with suggestions, and for which overrides may create a key without '+'.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/config/pipeline.h"

namespace matrix::config::loader_internal {

extern const std::vector<std::string> kTopKeys;
extern const std::vector<std::string> kDatasetKeys;
extern const std::vector<std::string> kRunKeys;
extern const std::vector<std::string> kModelKeys;
extern const std::vector<std::string> kPriceKeys;
extern const std::vector<std::string> kRoleCommonKeys;
extern const std::vector<std::pair<RoleType, std::vector<std::string>>> kRoleTypeKeys;
extern const std::vector<std::string> kFlowKeys;
extern const std::vector<std::string> kStepKeys;
extern const std::vector<std::string> kRuleKeys;
extern const std::vector<std::string> kFanoutKeys;

// The common role keys and those of every role type, each once.
std::vector<std::string> AllRoleKeys();
bool Contains(const std::vector<std::string>& v, const std::string& s);
// Whether the format knows the key at `parts` (a dotted path split up), so an
// override may create it without '+'. Free-form maps (params, sampling, set)
// accept any key.
bool SchemaKnows(const std::vector<std::string>& parts);
// Schema keys that could follow `prefix`, for suggestions.
std::vector<std::string> SchemaCandidates(const std::vector<std::string>& prefix);

}  // namespace matrix::config::loader_internal
