// Regex (RE2): compile errors that name the pattern, case-insensitive
// matching, capture groups, every match of a text, and input that is not
// valid UTF-8.
#include "common/config/regex.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace matrix::config {
namespace {

std::string CompileError(const std::string& pattern) {
  auto re = Regex::Compile(pattern);
  EXPECT_FALSE(re.ok()) << pattern;
  return re.ok() ? "" : re.status().ToString();
}

TEST(RegexTest, InvalidPatternsAreRefusedWithThePatternNamed) {
  for (const char* p : {"answer is ([A-J]", "(a)\\1", "x(?=y)", "a{2000}", "[z-a]"}) {
    auto re = Regex::Compile(p);
    ASSERT_FALSE(re.ok()) << p;
    EXPECT_EQ(re.status().code(), StatusCode::kInvalidArgument) << p;
    EXPECT_NE(re.status().message().find("invalid regex '" + std::string(p) + "'"), std::string::npos)
        << re.status().message();
  }
  EXPECT_NE(CompileError("(a)\\1").find("back-references are not supported"), std::string::npos);
  EXPECT_NE(CompileError("x(?!y)").find("lookahead and lookbehind are not supported"), std::string::npos);
  EXPECT_NE(CompileError("answer is ([A-J]").find("missing )"), std::string::npos);
  EXPECT_NE(CompileError(std::string(kMaxRegexPatternBytes + 1, 'a')).find("exceeds the limit"),
            std::string::npos);
}

TEST(RegexTest, IgnoreCase) {
  auto exact = Regex::Compile("Answer is ([a-j])");
  auto icase = Regex::Compile("Answer is ([a-j])", true);
  ASSERT_TRUE(exact.ok() && icase.ok());
  EXPECT_FALSE(exact->Search("THE ANSWER IS C"));
  auto m = icase->Find("THE ANSWER IS C");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->FirstGroupOrWhole(), "C");
  EXPECT_EQ(m->whole(), "ANSWER IS C");
  auto accented = Regex::Compile("é", true);
  ASSERT_TRUE(accented.ok());
  EXPECT_TRUE(accented->Search("CAFÉ"));
}

TEST(RegexTest, GroupsThatTookNoPart) {
  auto re = Regex::Compile("(a)|(b)");
  ASSERT_TRUE(re.ok());
  auto m = re->Find("xb");
  ASSERT_TRUE(m.has_value());
  ASSERT_EQ(m->groups.size(), 3u);
  EXPECT_FALSE(m->groups[1].has_value());
  EXPECT_EQ(m->groups[2], std::optional<std::string_view>("b"));
  EXPECT_EQ(m->FirstGroupOrWhole(), "b");
  auto none = Regex::Compile("x(y)?");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->Find("ax")->FirstGroupOrWhole(), "x");
  EXPECT_FALSE(re->Find("zzz").has_value());
}

TEST(RegexTest, FindAllVisitsEveryMatchLeftToRight) {
  auto re = Regex::Compile("answer is \\(([A-D])\\)");
  ASSERT_TRUE(re.ok());
  std::vector<std::string> seen;
  re->FindAll("answer is (A); no, the answer is (C)", [&](const Regex::Match& m) {
    seen.emplace_back(m.FirstGroupOrWhole());
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"A", "C"}));
  // Empty matches advance by one character, multi-byte ones included.
  auto empty = Regex::Compile("x*");
  ASSERT_TRUE(empty.ok());
  int n = 0;
  empty->FindAll("aéx", [&](const Regex::Match&) { ++n; });
  EXPECT_EQ(n, 4);  // before a, before é, "x", at the end
}

TEST(RegexTest, InvalidUtf8InputNeitherCrashesNorFails) {
  auto re = Regex::Compile("answer is \\(?([A-J])\\)?");
  ASSERT_TRUE(re.ok());
  const std::string text = "\xff\xfe garbage \xc3 then the answer is (B) \xe9\x80";
  auto m = re->Find(text);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->FirstGroupOrWhole(), "B");
  auto dot = Regex::Compile(".+", true);
  ASSERT_TRUE(dot.ok());
  int n = 0;
  dot->FindAll(text, [&](const Regex::Match& match) { n += match.whole().empty() ? 0 : 1; });
  EXPECT_GT(n, 0);
  auto any = Regex::Compile("");
  ASSERT_TRUE(any.ok());
  int empties = 0;
  any->FindAll("\x80\x80\xff", [&](const Regex::Match&) { ++empties; });
  EXPECT_GE(empties, 1);
}

}  // namespace
}  // namespace matrix::config
