// Expression language: parsing, every operator and function, lenient and
// strict lookups, regex limits and error positions.
#include "common/config/expr.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace matrix::config {
namespace {

const Json kCtx = Json::parse(R"json({
  "input": {"question": "What is 2+2?", "options": ["3", "4", "5"], "answer": "B",
            "text": "The answer is (C).", "n": 7, "score": 0.5, "empty": "", "tags": ["a", "b"],
            "meta": {"k": "v", "nested": {"x": 1}}, "unicode": "héllo"},
  "vars": {"agreement": true, "teacher_answer": "B", "student_answer": "b", "count": 0},
  "counters": {"turns": 20, "steps": 3},
  "last": {"content": "I think the answer is (D)"}
})json");

Json Ev(const std::string& text, const Json& ctx = kCtx) {
  auto e = Expr::Parse(text);
  EXPECT_TRUE(e.ok()) << text << ": " << e.status().ToString();
  if (!e.ok()) return Json("<parse error>");
  auto v = e->Eval(ctx);
  EXPECT_TRUE(v.ok()) << text << ": " << v.status().ToString();
  return v.ok() ? *v : Json("<eval error>");
}

bool EvB(const std::string& text) {
  auto e = Expr::Parse(text);
  EXPECT_TRUE(e.ok()) << text << ": " << e.status().ToString();
  auto v = e->EvalBool(kCtx);
  EXPECT_TRUE(v.ok()) << text << ": " << v.status().ToString();
  return v.ok() && *v;
}

std::string EvalError(const std::string& text, bool strict = false) {
  auto e = Expr::Parse(text);
  EXPECT_TRUE(e.ok()) << text << ": " << e.status().ToString();
  if (!e.ok()) return "";
  auto v = strict ? e->EvalStrict(kCtx) : e->Eval(kCtx);
  EXPECT_FALSE(v.ok()) << text << " evaluated to " << (v.ok() ? v->dump() : "");
  return v.ok() ? "" : v.status().message();
}

std::string ParseError(const std::string& text) {
  auto e = Expr::Parse(text);
  EXPECT_FALSE(e.ok()) << text;
  return e.ok() ? "" : e.status().message();
}

TEST(ExprTest, Literals) {
  EXPECT_EQ(Ev("42"), 42);
  EXPECT_EQ(Ev("-3"), -3);
  EXPECT_DOUBLE_EQ(Ev("2.5").get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(Ev("1e3").get<double>(), 1000.0);
  EXPECT_EQ(Ev("'single'"), "single");
  EXPECT_EQ(Ev("\"dou\\\"ble\""), "dou\"ble");
  EXPECT_EQ(Ev(R"("a\nb\t\u00e9")"), "a\nb\t\xc3\xa9");
  EXPECT_EQ(Ev(R"("\d+")"), "\\d+");  // unknown escapes stay as written
  EXPECT_EQ(Ev("true"), true);
  EXPECT_EQ(Ev("False"), false);
  EXPECT_TRUE(Ev("null").is_null());
  EXPECT_TRUE(Ev("None").is_null());
  EXPECT_EQ(Ev("[1, 'a', [true]]"), Json::parse(R"([1, "a", [true]])"));
  EXPECT_EQ(Ev("[]"), Json::array());
  EXPECT_EQ(Ev("{'a': 1, \"b\": [2]}"), Json::parse(R"({"a": 1, "b": [2]})"));
}

TEST(ExprTest, PathsAndIndexing) {
  EXPECT_EQ(Ev("input.question"), "What is 2+2?");
  EXPECT_EQ(Ev("input.meta.nested.x"), 1);
  EXPECT_EQ(Ev("input.options[0]"), "3");
  EXPECT_EQ(Ev("input.options[-1]"), "5");
  EXPECT_EQ(Ev("input['meta'][\"k\"]"), "v");
  EXPECT_EQ(Ev("\"ABCDEFGHIJ\"[2]"), "C");
  EXPECT_EQ(Ev("\"ABCDEFGHIJ\"[-1]"), "J");
  EXPECT_EQ(Ev("input.unicode[1]"), "\xc3\xa9");
  EXPECT_EQ(Ev("input.options[1:]"), Json::parse(R"(["4", "5"])"));
  EXPECT_EQ(Ev("input.options[:-1]"), Json::parse(R"(["3", "4"])"));
  EXPECT_EQ(Ev("'abcdef'[1:3]"), "bc");
  EXPECT_EQ(Ev("input.unicode[:2]"), "h\xc3\xa9");
  Json ctx = {{"i", 3}, {"xs", {10, 20, 30, 40}}};
  EXPECT_EQ(Ev("xs[i - 1]", ctx), 30);
  EXPECT_EQ(Ev("'ABCD'[i]", ctx), "D");
}

TEST(ExprTest, MissingPathsAreNullWhenLenient) {
  EXPECT_TRUE(Ev("input.missing").is_null());
  EXPECT_TRUE(Ev("input.missing.deeper[3]").is_null());
  EXPECT_TRUE(Ev("nothing").is_null());
  EXPECT_TRUE(Ev("input.options[10]").is_null());
  EXPECT_TRUE(Ev("input.n.x").is_null());
  EXPECT_FALSE(EvB("vars.missing"));
  EXPECT_TRUE(EvB("vars.missing == null"));
  EXPECT_FALSE(EvB("vars.missing > 3"));
  EXPECT_FALSE(EvB("vars.missing =~ 'x'"));
  EXPECT_EQ(Ev("len(vars.missing)"), 0);
}

TEST(ExprTest, StrictModeNamesTheUndefinedPath) {
  EXPECT_EQ(EvalError("input.foo", true), "undefined 'input.foo'");
  EXPECT_EQ(EvalError("input.meta.nested.y + 1", true), "undefined 'input.meta.nested.y'");
  EXPECT_EQ(EvalError("nope", true), "undefined 'nope'");
  EXPECT_EQ(EvalError("input.options[5]", true), "undefined 'input.options[5]'");
  // default() and `is defined` look leniently even in strict mode.
  auto e = Expr::Parse("default(input.foo, 'x') ~ (input.foo is defined) ~ (input.n is defined)");
  ASSERT_TRUE(e.ok());
  auto v = e->EvalStrict(kCtx);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v, "xfalsetrue");
  EXPECT_EQ(*Expr::Parse("input.foo | default('n/a')")->EvalStrict(kCtx), "n/a");
}

TEST(ExprTest, Comparisons) {
  EXPECT_TRUE(EvB("input.n == 7"));
  EXPECT_TRUE(EvB("input.n == 7.0"));
  EXPECT_TRUE(EvB("input.n != 8"));
  EXPECT_FALSE(EvB("input.n == '7'"));  // across types: unequal
  EXPECT_TRUE(EvB("1 != '1'"));
  EXPECT_TRUE(EvB("input.score < 1"));
  EXPECT_TRUE(EvB("counters.turns >= 20"));
  EXPECT_FALSE(EvB("counters.turns > 20"));
  EXPECT_TRUE(EvB("counters.turns <= 20.5"));
  EXPECT_TRUE(EvB("'apple' < 'banana'"));
  EXPECT_TRUE(EvB("'b' > 'B'"));
  EXPECT_TRUE(EvB("[1, 2] == [1, 2]"));
  EXPECT_TRUE(EvB("input.meta == {'k': 'v', 'nested': {'x': 1}}"));
  EXPECT_TRUE(EvB("vars.agreement == true"));
  EXPECT_NE(EvalError("'a' < 1"), "");
  EXPECT_NE(ParseError("1 < 2 < 3").find("cannot be chained"), std::string::npos);
}

TEST(ExprTest, Arithmetic) {
  EXPECT_EQ(Ev("1 + 2 * 3"), 7);
  EXPECT_EQ(Ev("(1 + 2) * 3"), 9);
  EXPECT_DOUBLE_EQ(Ev("7 / 2").get<double>(), 3.5);
  EXPECT_EQ(Ev("7 // 2"), 3);
  EXPECT_EQ(Ev("-7 // 2"), -4);
  EXPECT_EQ(Ev("7 % 3"), 1);
  EXPECT_EQ(Ev("-7 % 3"), 2);
  EXPECT_DOUBLE_EQ(Ev("input.score * 4").get<double>(), 2.0);
  EXPECT_EQ(Ev("- input.n"), -7);
  EXPECT_EQ(Ev("'ab' + 'cd'"), "abcd");
  EXPECT_EQ(Ev("[1] + [2, 3]"), Json::parse("[1, 2, 3]"));
  EXPECT_EQ(Ev("'=' * 3"), "===");
  EXPECT_EQ(Ev("'n=' ~ input.n ~ ' ok=' ~ true"), "n=7 ok=true");
  EXPECT_NE(EvalError("1 / 0").find("division by zero"), std::string::npos);
  EXPECT_NE(EvalError("1 % 0").find("division by zero"), std::string::npos);
  EXPECT_NE(EvalError("9223372036854775807 + 1").find("overflow"), std::string::npos);
  EXPECT_NE(EvalError("'a' + 1").find("cannot combine string and integer"), std::string::npos);
  EXPECT_NE(EvalError("'x' * 100000000").find("limit"), std::string::npos);
}

TEST(ExprTest, LogicAndTruthiness) {
  EXPECT_TRUE(EvB("vars.agreement and counters.turns > 1"));
  EXPECT_TRUE(EvB("vars.agreement && !vars.missing"));
  EXPECT_TRUE(EvB("vars.missing or vars.agreement"));
  EXPECT_TRUE(EvB("vars.missing || 1"));
  EXPECT_TRUE(EvB("not vars.missing"));
  EXPECT_TRUE(EvB("not vars.teacher_answer == 'C'"));
  EXPECT_EQ(Ev("vars.missing or 'fallback'"), "fallback");
  EXPECT_EQ(Ev("input.empty and 'never'"), "");
  // Short circuit: the right side would fail.
  EXPECT_FALSE(EvB("false and 1 / 0"));
  for (const char* falsy : {"null", "false", "0", "0.0", "''", "[]", "{}", "input.empty", "vars.count"}) {
    EXPECT_FALSE(EvB(falsy)) << falsy;
  }
  for (const char* truthy : {"1", "-1", "'x'", "[0]", "{'a': 0}", "input.meta", "true"}) {
    EXPECT_TRUE(EvB(truthy)) << truthy;
  }
}

TEST(ExprTest, MembershipAndRegex) {
  EXPECT_TRUE(EvB("'answer' in input.text"));
  EXPECT_TRUE(EvB("'4' in input.options"));
  EXPECT_TRUE(EvB("'6' not in input.options"));
  EXPECT_TRUE(EvB("'k' in input.meta"));
  EXPECT_FALSE(EvB("'zz' in input.meta"));
  EXPECT_TRUE(EvB("7 in [7.0, 8]"));
  EXPECT_FALSE(EvB("'x' in vars.missing"));
  EXPECT_TRUE(EvB("input.text =~ 'answer is \\\\(([A-J])\\\\)'"));
  EXPECT_TRUE(EvB("input.text =~ \"answer is \\(([A-J])\\)\""));
  EXPECT_TRUE(EvB("last.content !~ '^The'"));
  EXPECT_TRUE(EvB("input.question =~ '\\d\\+\\d'"));
  Json ctx = {{"p", "^W.*\\?$"}, {"s", "What?"}};
  EXPECT_TRUE(Expr::Parse("s =~ p")->EvalBool(ctx).value());
  EXPECT_NE(EvalError("input.n =~ 'x'").find("string on the left"), std::string::npos);
}

TEST(ExprTest, Ternary) {
  EXPECT_DOUBLE_EQ(Ev("1.0 if vars.agreement else 0.0").get<double>(), 1.0);
  EXPECT_EQ(Ev("'yes' if vars.missing else 'no'"), "no");
  EXPECT_TRUE(Ev("'yes' if vars.missing").is_null());
  EXPECT_EQ(Ev("'a' if false else 'b' if true else 'c'"), "b");
}

TEST(ExprTest, Functions) {
  EXPECT_EQ(Ev("len(input.options)"), 3);
  EXPECT_EQ(Ev("len(input.question)"), 12);
  EXPECT_EQ(Ev("len(input.unicode)"), 5);
  EXPECT_EQ(Ev("len(input.meta)"), 2);
  EXPECT_EQ(Ev("lower('AbC')"), "abc");
  EXPECT_EQ(Ev("upper(vars.student_answer)"), "B");
  EXPECT_EQ(Ev("trim('  x y \\n')"), "x y");
  EXPECT_EQ(Ev("int('42')"), 42);
  EXPECT_EQ(Ev("int(' 3.9 ')"), 3);
  EXPECT_EQ(Ev("int(2.7)"), 2);
  EXPECT_EQ(Ev("int(true)"), 1);
  EXPECT_DOUBLE_EQ(Ev("float('2.5')").get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(Ev("float(3)").get<double>(), 3.0);
  EXPECT_EQ(Ev("str(12)"), "12");
  EXPECT_EQ(Ev("str(null)"), "");
  EXPECT_EQ(Ev("str([1, 'a'])"), "[1,\"a\"]");
  EXPECT_TRUE(EvB("contains(input.text, 'answer')"));
  EXPECT_TRUE(EvB("contains(input.tags, 'b')"));
  EXPECT_TRUE(EvB("startswith(input.text, 'The')"));
  EXPECT_TRUE(EvB("endswith(input.text, '.')"));
  EXPECT_FALSE(EvB("endswith('a', 'abc')"));
  EXPECT_EQ(Ev("regex(input.text, 'answer is \\\\(([A-J])\\\\)')"), "C");
  EXPECT_EQ(Ev("regex(input.text, '[0-9]+|answer')"), "answer");
  EXPECT_TRUE(Ev("regex(input.text, 'xyz')").is_null());
  EXPECT_TRUE(Ev("regex(vars.missing, 'x')").is_null());
  EXPECT_EQ(Ev("default(vars.missing, 5)"), 5);
  EXPECT_EQ(Ev("default(input.n, 5)"), 7);
  EXPECT_EQ(Ev("default(input.empty, 'd', true)"), "d");
  EXPECT_EQ(Ev("min(3, 1, 2)"), 1);
  EXPECT_EQ(Ev("max([3, 9.5, 2])"), 9.5);
  EXPECT_EQ(Ev("max('a', 'c', 'b')"), "c");
  EXPECT_EQ(Ev("sum([1, 2, 3.5])"), 6.5);
  EXPECT_EQ(Ev("abs(-4)"), 4);
  EXPECT_EQ(Ev("round(2.5)"), 3);
  EXPECT_DOUBLE_EQ(Ev("round(2.346, 2)").get<double>(), 2.35);
  EXPECT_EQ(Ev("join(input.options, ', ')"), "3, 4, 5");
  EXPECT_EQ(Ev("split('a b  c')"), Json::parse(R"(["a","b","c"])"));
  EXPECT_EQ(Ev("'a,b'.split(',')"), Json::parse(R"(["a","b"])"));
  EXPECT_EQ(Ev("replace('aXbX', 'X', '-')"), "a-b-");
  EXPECT_EQ(Ev("first(input.options) ~ last(input.options)"), "35");
  EXPECT_EQ(Ev("keys(input.meta)"), Json::parse(R"(["k","nested"])"));
  EXPECT_EQ(Ev("input.meta.items()[0]"), Json::parse(R"(["k","v"])"));
  EXPECT_EQ(Ev("get(input.meta, 'zz', 'dflt')"), "dflt");
  EXPECT_EQ(Ev("sorted([3, 1, 2])"), Json::parse("[1,2,3]"));
  EXPECT_EQ(Ev("unique([1, 2, 1, 'a', 'a'])"), Json::parse(R"([1,2,"a"])"));
  EXPECT_EQ(Ev("range(3)"), Json::parse("[0,1,2]"));
  EXPECT_EQ(Ev("range(5, 0, -2)"), Json::parse("[5,3,1]"));
  EXPECT_EQ(Ev("tojson(input.tags)"), "[\"a\",\"b\"]");
  EXPECT_EQ(Ev("fromjson('{\"overall\": 4}').overall"), 4);
  EXPECT_EQ(Ev("input.question | lower | replace('what', 'so')"), "so is 2+2?");
  EXPECT_EQ(Ev("input.options | length > 2"), true);
  EXPECT_NE(EvalError("int('abc')").find("cannot convert"), std::string::npos);
  EXPECT_NE(EvalError("min([])").find("empty"), std::string::npos);
  EXPECT_NE(EvalError("range(1000000)").find("range()"), std::string::npos);
  EXPECT_NE(EvalError("fromjson('{')").find("not valid JSON"), std::string::npos);
  EXPECT_TRUE(IsKnownFunction("join"));
  EXPECT_FALSE(IsKnownFunction("system"));
}

TEST(ExprTest, Tests) {
  EXPECT_TRUE(EvB("input.n is integer"));
  EXPECT_TRUE(EvB("input.score is float"));
  EXPECT_TRUE(EvB("input.n is number and input.n is odd"));
  EXPECT_TRUE(EvB("input.tags is list"));
  EXPECT_TRUE(EvB("input.meta is mapping"));
  EXPECT_TRUE(EvB("vars.missing is none"));
  EXPECT_TRUE(EvB("vars.missing is not defined"));
  EXPECT_TRUE(EvB("vars.agreement is boolean"));
  EXPECT_TRUE(EvB("'s' is string"));
}

TEST(ExprTest, ParseErrorsSayWhereAndWhat) {
  EXPECT_EQ(ParseError("len(x"), "position 6: expected ')' after function arguments but found end of input");
  EXPECT_EQ(ParseError("a ="), "position 3: unexpected '=' (use '==' to compare)");
  EXPECT_EQ(ParseError("1 +"), "position 4: expected a value but found end of input");
  EXPECT_EQ(ParseError("a b"), "position 3: expected end of expression but found 'b'");
  EXPECT_EQ(ParseError("'abc"), "position 1: unterminated string");
  EXPECT_EQ(ParseError("foo(1)"), "position 1: unknown function 'foo'");
  EXPECT_EQ(ParseError("x | nosuch"), "position 5: unknown function 'nosuch'");
  EXPECT_EQ(ParseError("len(1, 2)"), "position 1: len() takes 1 argument(s), got 2");
  EXPECT_EQ(ParseError("x.(1)"), "position 3: expected a name after '.' but found '('");
  EXPECT_EQ(ParseError("[1, 2"), "position 6: expected ',' or ']' in list but found end of input");
  EXPECT_EQ(ParseError("x is nice"), "position 6: expected a test name after 'is' (defined, none, string, ...) but found 'nice'");
  EXPECT_EQ(ParseError(""), "position 1: expected a value but found end of input");
  EXPECT_EQ(ParseError("x # y"), "position 3: unexpected character '#'");
  EXPECT_NE(ParseError("x =~ '(unclosed'").find("invalid regex"), std::string::npos);
  EXPECT_NE(ParseError("regex(x, '([a-z]')").find("invalid regex"), std::string::npos);
  EXPECT_NE(ParseError("x =~ '(a)\\\\1'").find("back-references are not supported"), std::string::npos);
  EXPECT_NE(ParseError("x =~ 'a(?=b)'").find("invalid regex 'a(?=b)'"), std::string::npos);
  size_t offset = 0;
  EXPECT_FALSE(Expr::Parse("a and (b or", &offset).ok());
  EXPECT_EQ(offset, 11u);
}

TEST(ExprTest, LimitsKeepEvaluationBounded) {
  std::string deep(200, '(');
  deep += "1" + std::string(200, ')');
  EXPECT_NE(ParseError(deep).find("nested too deeply"), std::string::npos);
  std::string nots;
  for (int i = 0; i < 500; ++i) nots += "not ";
  EXPECT_NE(ParseError(nots + "x").find("nested too deeply"), std::string::npos);
  std::string sum = "1";
  for (int i = 0; i < 300; ++i) sum += "+1";
  EXPECT_NE(ParseError(sum).find("nested too deeply"), std::string::npos);
  EXPECT_NE(ParseError(std::string(kMaxExprBytes + 1, ' ')).find("exceeds the limit"), std::string::npos);
  EXPECT_NE(ParseError("x =~ '" + std::string(kMaxRegexPatternBytes + 1, 'a') + "'").find("limit"),
            std::string::npos);
  // Long regex inputs neither crash nor run away; beyond the limit they are refused.
  Json ctx = {{"s", std::string(kMaxRegexInputBytes - 20, 'a') + " answer is (B)"}};
  auto e = Expr::Parse("regex(s, '.*answer is \\\\(([A-J])\\\\)')");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e->Eval(ctx), "B");
  ctx["s"] = std::string(kMaxRegexInputBytes + 1, 'a');
  auto v = e->Eval(ctx);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("exceeds the limit"), std::string::npos);
}

TEST(ExprTest, CopiesShareTheTreeAndEvaluateConcurrently) {
  auto parsed = Expr::Parse("len(input.options) * counters.turns + (1 if vars.agreement else 0)");
  ASSERT_TRUE(parsed.ok());
  Expr copy = *parsed;
  EXPECT_EQ(copy.text(), parsed->text());
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto v = copy.Eval(kCtx);
        if (v.ok() && *v == 61) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 800);
}

TEST(ExprTest, RegexOnTextThatIsNotUtf8) {
  Json ctx = {{"s", "\xff\xfe noise \xc3 answer is (B) \xe9"}};
  EXPECT_EQ(Ev("regex(s, 'answer is \\\\(([A-J])\\\\)')", ctx), "B");
  EXPECT_EQ(Ev("s =~ 'ANSWER'", ctx), false);
  EXPECT_EQ(Ev("s =~ '(?i)ANSWER'", ctx), true);
}

TEST(ExprTest, RegexSearchAndExtract) {
  auto re = CompileRegex("answer is \\(?([A-J])\\)?|\\*\\*([A-J])\\*\\*");
  ASSERT_TRUE(re.ok());
  EXPECT_EQ(RegexExtract(*re, "so **C** it is").value(), std::optional<std::string>("C"));
  EXPECT_EQ(RegexExtract(*re, "the answer is B").value(), std::optional<std::string>("B"));
  EXPECT_EQ(RegexExtract(*re, "nothing").value(), std::nullopt);
  auto icase = CompileRegex("ANSWER", true);
  ASSERT_TRUE(icase.ok());
  EXPECT_TRUE(RegexSearch(*icase, "the answer").value());
  EXPECT_FALSE(CompileRegex("[").ok());
}

}  // namespace
}  // namespace matrix::config
