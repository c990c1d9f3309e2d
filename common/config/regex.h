// Regular expressions of pipelines (`=~`, regex() and extract roles), backed
// by RE2: Perl-like syntax without back-references or lookaround, matched in
// time linear in the input, so no pattern or text can make a search run away.
// Patterns and texts are UTF-8; bytes that are not valid UTF-8 match nothing
// (not even '.') but never make a search fail.
//
// Thread-safety: a Regex is immutable after Compile; copies share the
// compiled program and may search concurrently from any number of threads.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"

namespace re2 {
class RE2;
}

namespace matrix::config {

inline constexpr size_t kMaxRegexPatternBytes = 1024;     // one pattern
inline constexpr size_t kMaxRegexInputBytes = 64 * 1024;  // text searched by one expression regex

class Regex {
 public:
  // One match. Views point into the searched text.
  struct Match {
    // [0] the whole match, [i] capture group i; nullopt where a group took no
    // part in the match.
    std::vector<std::optional<std::string_view>> groups;

    std::string_view whole() const { return *groups[0]; }
    // The first capture group that took part, else the whole match.
    std::string_view FirstGroupOrWhole() const;
  };

  // InvalidArgument naming the pattern and the problem when RE2 rejects it
  // or it is longer than kMaxRegexPatternBytes.
  static StatusOr<Regex> Compile(std::string_view pattern, bool ignore_case = false);

  // Whether the pattern matches anywhere in `text`.
  bool Search(std::string_view text) const;
  // The leftmost match, or nullopt.
  std::optional<Match> Find(std::string_view text) const;
  // Calls `fn` for every non-overlapping match, left to right. After an
  // empty match the search resumes one character further.
  void FindAll(std::string_view text, const std::function<void(const Match&)>& fn) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  bool MatchAt(std::string_view text, size_t start, Match* m) const;

  std::string pattern_;
  std::shared_ptr<const re2::RE2> re_;  // never null
};

}  // namespace matrix::config
