// Command-line parsing shared by every binary: `--name=value`, `--name value`,
// boolean `--name`, and positionals (which include `a.b.c=value` overrides).
// Unknown flags are an error naming the flag, so typos never pass silently.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix {

class Flags {
 public:
  // `known` lists every accepted flag name (without dashes); `boolean` the ones
  // that take no value.
  static StatusOr<Flags> Parse(int argc, char** argv, const std::set<std::string>& known,
                               const std::set<std::string>& boolean = {});

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& def = "") const;
  int64_t GetInt(const std::string& name, int64_t def) const;
  double GetDouble(const std::string& name, double def) const;
  bool GetBool(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace matrix
