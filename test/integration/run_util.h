// Helpers for integration tests that run `matrix` end to end.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/base/json.h"

namespace matrix::testing {

// Reads every record of every p*.jsonl and p*.jsonl.zst under dir.
std::vector<Json> ReadRecords(const std::string& dir);

// Counts the whole lines of every p*.jsonl[.zst] under dir without parsing them:
// for polling while a sink may be half-way through writing a record.
size_t CountRecords(const std::string& dir);

// The first process whose command line matches the pgrep pattern, or -1.
// (The shell running pgrep is not matched: its own copy of the pattern has
// the first letter in brackets.)
int PidOf(const std::string& pattern);

// Counts task ids; fills *duplicates with ids seen more than once.
std::set<std::string> TaskIds(const std::vector<Json>& records, std::vector<std::string>* duplicates);

}  // namespace matrix::testing
