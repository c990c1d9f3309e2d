// Regex on top of RE2: the only file that sees RE2's API.
#include "common/config/regex.h"

#include <re2/re2.h>

namespace matrix::config {

namespace {

std::string QuotePattern(std::string_view s) {
  std::string out = "'";
  out.append(s.substr(0, 60));
  if (s.size() > 60) out += "...";
  out += "'";
  return out;
}

// RE2's message, or a plainer one for the ECMAScript/PCRE features that RE2
// leaves out on purpose (they need backtracking).
std::string WhyInvalid(const RE2& re) {
  const std::string& arg = re.error_arg();
  if (re.error_code() == RE2::ErrorBadEscape && arg.size() >= 2 && arg[1] >= '1' && arg[1] <= '9') {
    return "back-references are not supported";
  }
  if (re.error_code() == RE2::ErrorBadPerlOp &&
      (arg.rfind("(?=", 0) == 0 || arg.rfind("(?!", 0) == 0 || arg.rfind("(?<=", 0) == 0 ||
       arg.rfind("(?<!", 0) == 0)) {
    return "lookahead and lookbehind are not supported";
  }
  return re.error();
}

}  // namespace

std::string_view Regex::Match::FirstGroupOrWhole() const {
  for (size_t i = 1; i < groups.size(); ++i) {
    if (groups[i]) return *groups[i];
  }
  return whole();
}

StatusOr<Regex> Regex::Compile(std::string_view pattern, bool ignore_case) {
  if (pattern.size() > kMaxRegexPatternBytes) {
    return InvalidArgument("regex pattern of " + std::to_string(pattern.size()) +
                           " bytes exceeds the limit of " + std::to_string(kMaxRegexPatternBytes));
  }
  RE2::Options options;
  // Errors come back through the Status; RE2 would also print them to stderr.
  options.set_log_errors(false);
  options.set_case_sensitive(!ignore_case);
  auto re = std::make_shared<const RE2>(re2::StringPiece(pattern.data(), pattern.size()), options);
  if (!re->ok()) return InvalidArgument("invalid regex " + QuotePattern(pattern) + ": " + WhyInvalid(*re));
  Regex out;
  out.pattern_ = std::string(pattern);
  out.re_ = std::move(re);
  return out;
}

bool Regex::Search(std::string_view text) const {
  return re_->Match(re2::StringPiece(text.data(), text.size()), 0, text.size(), RE2::UNANCHORED, nullptr, 0);
}

bool Regex::MatchAt(std::string_view text, size_t start, Match* m) const {
  const int n = 1 + re_->NumberOfCapturingGroups();
  std::vector<re2::StringPiece> subs(static_cast<size_t>(n));
  if (!re_->Match(re2::StringPiece(text.data(), text.size()), start, text.size(), RE2::UNANCHORED, subs.data(),
                  n)) {
    return false;
  }
  m->groups.assign(subs.size(), std::nullopt);
  for (size_t i = 0; i < subs.size(); ++i) {
    // A group that took no part has no data; an empty one that did points into the text.
    if (subs[i].data() != nullptr) {
      m->groups[i] = std::string_view(subs[i].data(), subs[i].size());
    } else if (i == 0) {
      m->groups[i] = text.substr(start, 0);
    }
  }
  return true;
}

std::optional<Regex::Match> Regex::Find(std::string_view text) const {
  Match m;
  if (!MatchAt(text, 0, &m)) return std::nullopt;
  return m;
}

void Regex::FindAll(std::string_view text, const std::function<void(const Match&)>& fn) const {
  Match m;
  size_t pos = 0;
  while (pos <= text.size() && MatchAt(text, pos, &m)) {
    fn(m);
    size_t end = static_cast<size_t>(m.whole().data() - text.data()) + m.whole().size();
    if (m.whole().empty()) {
      if (end >= text.size()) break;
      // Step over one whole UTF-8 character, not into the middle of one.
      ++end;
      while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    }
    pos = end;
  }
}

}  // namespace matrix::config
