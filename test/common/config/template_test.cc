// Prompt templates: the MMLU-Pro rendering, loops, conditionals, filters,
// whitespace control, and errors that name the template and line.
#include "common/config/template.h"

#include <gtest/gtest.h>

namespace matrix::config {
namespace {

const Json kCtx = Json::parse(R"({
  "input": {"question": "Which is prime?", "options": ["4", "6", "7"], "answer": "C",
            "meta": {"a": 1, "b": 2}, "empty": [], "name": "  Ada  "},
  "vars": {"score": 0.75, "flag": true},
  "history": [{"role": "teacher", "content": "hi"}, {"role": "student", "content": "hello"}]
})");

std::string Render(const std::string& src, const Json& ctx = kCtx) {
  auto t = Template::Parse(src, "t");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  if (!t.ok()) return "<parse error>";
  auto out = t->Render(ctx);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? *out : "<render error>";
}

std::string ParseError(const std::string& src, const std::string& name = "prompt") {
  auto t = Template::Parse(src, name);
  EXPECT_FALSE(t.ok()) << src;
  return t.ok() ? "" : t.status().message();
}

std::string RenderError(const std::string& src, const std::string& name = "prompt") {
  auto t = Template::Parse(src, name);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  if (!t.ok()) return "";
  auto out = t->Render(kCtx);
  EXPECT_FALSE(out.ok()) << "rendered: " << (out.ok() ? *out : "");
  return out.ok() ? "" : out.status().message();
}

TEST(TemplateTest, MmluProQuestion) {
  const std::string src =
      "{{ input.question }}\n{% for o in input.options %}{{ \"ABCDEFGHIJ\"[loop.index0] }}. {{ o }}\n{% endfor %}";
  EXPECT_EQ(Render(src), "Which is prime?\nA. 4\nB. 6\nC. 7\n");
}

TEST(TemplateTest, PlainTextAndBraces) {
  EXPECT_EQ(Render(""), "");
  EXPECT_EQ(Render("no tags { here } {x}"), "no tags { here } {x}");
  EXPECT_EQ(Render("JSON like {\"a\": 1}"), "JSON like {\"a\": 1}");
  EXPECT_EQ(Render("{{ '}}' }}"), "}}");
  EXPECT_EQ(Render("{{ {'k': 1}['k'] }}"), "1");
  EXPECT_EQ(Render("{% raw %}{{ not evaluated }}{% endraw %}"), "{{ not evaluated }}");
}

TEST(TemplateTest, ValuesPrint) {
  EXPECT_EQ(Render("{{ vars.score }} {{ vars.flag }} {{ input.meta }} {{ null }}|"),
            "0.75 true {\"a\":1,\"b\":2} |");
  EXPECT_EQ(Render("{{ 1 + 2 }}"), "3");
}

TEST(TemplateTest, Loops) {
  EXPECT_EQ(Render("{% for o in input.options %}{{ loop.index }}/{{ loop.length }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %} {% endfor %}"),
            "1/3F 2/3 3/3L ");
  EXPECT_EQ(Render("{% for o in input.options %}{{ loop.revindex }}{{ loop.revindex0 }}{% endfor %}"), "322110");
  EXPECT_EQ(Render("{% for k, v in input.meta.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(Render("{% for k, v in input.meta %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(Render("{% for k in input.meta %}{{ k }}{% endfor %}"), "ab");
  EXPECT_EQ(Render("{% for x in input.empty %}x{% else %}none{% endfor %}"), "none");
  EXPECT_EQ(Render("{% for t in history %}[{{ t.role }}: {{ t.content }}]{% endfor %}"),
            "[teacher: hi][student: hello]");
  EXPECT_EQ(Render("{% for i in range(2) %}{% for j in range(2) %}{{ i }}{{ j }} {% endfor %}{% endfor %}"),
            "00 01 10 11 ");
  // Inner loop variables shadow and then disappear.
  EXPECT_EQ(Render("{% for input in [1] %}{{ input }}{% endfor %}{{ input.answer }}"), "1C");
}

TEST(TemplateTest, Conditionals) {
  const std::string src = "{% if vars.score > 0.9 %}high{% elif vars.score > 0.5 %}mid{% else %}low{% endif %}";
  EXPECT_EQ(Render(src), "mid");
  EXPECT_EQ(Render(src, {{"vars", {{"score", 1}}}}), "high");
  EXPECT_EQ(Render(src, {{"vars", {{"score", 0}}}}), "low");
  EXPECT_EQ(Render("{% if input.hint is defined %}{{ input.hint }}{% else %}no hint{% endif %}"), "no hint");
  EXPECT_EQ(Render("{% if input.empty %}x{% endif %}"), "");
}

TEST(TemplateTest, Set) {
  EXPECT_EQ(Render("{% set n = input.options | length %}{{ n * 2 }}"), "6");
  EXPECT_EQ(Render("{% set letters = 'ABC' %}{% for o in input.options %}{{ letters[loop.index0] }}{% endfor %}"),
            "ABC");
}

TEST(TemplateTest, Filters) {
  EXPECT_EQ(Render("{{ input.options | join(', ') }}"), "4, 6, 7");
  EXPECT_EQ(Render("{{ input.question | upper }}"), "WHICH IS PRIME?");
  EXPECT_EQ(Render("{{ input.question | lower }}"), "which is prime?");
  EXPECT_EQ(Render("[{{ input.name | trim }}]"), "[Ada]");
  EXPECT_EQ(Render("{{ input.options | length }}"), "3");
  EXPECT_EQ(Render("{{ input.hint | default(\"n/a\") }}"), "n/a");
  EXPECT_EQ(Render("{{ input.missing.deeper | default('n/a') }}"), "n/a");
  EXPECT_EQ(Render("{{ input.options | tojson }}"), "[\"4\",\"6\",\"7\"]");
  EXPECT_EQ(Render("{{ input.options | first }}{{ input.options | last }}"), "47");
  EXPECT_EQ(Render("{{ input.question | replace('prime', 'even') }}"), "Which is even?");
  EXPECT_EQ(Render("{{ '42' | int + 1 }}"), "43");
  EXPECT_EQ(Render("{{ vars.score | string }}"), "0.75");
  EXPECT_EQ(Render("{{ input.meta | tojson(2) }}"), "{\n  \"a\": 1,\n  \"b\": 2\n}");
}

TEST(TemplateTest, WhitespaceControl) {
  EXPECT_EQ(Render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(Render("list:\n{%- for o in input.options %}\n  - {{ o }}\n{%- endfor %}\n"),
            "list:\n  - 4\n  - 6\n  - 7\n");
  EXPECT_EQ(Render("{% for o in input.options -%}\n  {{ o }}\n{%- endfor %}"), "467");
  EXPECT_EQ(Render("x {#- a comment -#} y"), "xy");
  EXPECT_EQ(Render("x {# comment #} y"), "x  y");
  EXPECT_EQ(Render("keep\n{% if true %}\nline\n{% endif %}\n"), "keep\n\nline\n\n");
}

TEST(TemplateTest, UndefinedIsAnErrorNamingTemplateLineAndPath) {
  EXPECT_EQ(RenderError("line one\nline two {{ input.hint }}"), "prompt:2: undefined 'input.hint'");
  EXPECT_EQ(RenderError("{% for x in input.nothing %}{% endfor %}", "roles.a.prompt"),
            "roles.a.prompt:1: undefined 'input.nothing'");
  EXPECT_EQ(RenderError("\n\n{% if vars.nope %}x{% endif %}"), "prompt:3: undefined 'vars.nope'");
  EXPECT_EQ(RenderError("{% if false %}{% elif\nvars.nope %}{% endif %}"), "prompt:1: undefined 'vars.nope'");
  EXPECT_EQ(RenderError("{{ input.options[7] }}"), "prompt:1: undefined 'input.options[7]'");
  EXPECT_EQ(RenderError("{% for x in input.answer %}{% endfor %}"), "prompt:1: cannot iterate over a string ('input.answer')");
  EXPECT_EQ(RenderError("{{ 1 / 0 }}"), "prompt:1: division by zero");
  auto t = Template::Parse("{{ x }}");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->Render(Json::object()).status().message(), "<template>:1: undefined 'x'");
}

TEST(TemplateTest, ParseErrorsNameTemplateAndLine) {
  EXPECT_EQ(ParseError("a\n{% if x %}\nb"), "prompt:2: 'if' is never closed (expected 'endif')");
  EXPECT_EQ(ParseError("{% for x in xs %}"), "prompt:1: 'for' is never closed (expected 'endfor')");
  EXPECT_EQ(ParseError("x\ny\n{% endif %}"), "prompt:3: unexpected 'endif'");
  EXPECT_EQ(ParseError("{{ x"), "prompt:1: '{{' is never closed (expected '}}')");
  EXPECT_EQ(ParseError("{% block x %}"), "prompt:1: unknown tag 'block' (supported: if, elif, else, endif, for, endfor, set, raw)");
  EXPECT_EQ(ParseError("one\n{{ len(x }}"), "prompt:2: position 6: expected ')' after function arguments but found end of input");
  EXPECT_EQ(ParseError("{% for x of xs %}{% endfor %}"), "prompt:1: expected 'in' after the loop variable(s)");
  EXPECT_EQ(ParseError("{% set x == 1 %}"), "prompt:1: expected '=' after 'set x'");
  EXPECT_EQ(ParseError("{{ }}"), "prompt:1: empty '{{ }}'");
  EXPECT_EQ(ParseError("{# open"), "prompt:1: comment '{#' is never closed");
  EXPECT_EQ(ParseError("{% if a %}{% else %}{% elif b %}{% endif %}"), "prompt:1: unexpected 'elif'");
  // An error inside a multi-line tag points at the line holding the problem.
  EXPECT_EQ(ParseError("{% if a and\n  (b or %}{% endif %}"), "prompt:2: position 14: expected a value but found end of input");
}

TEST(TemplateTest, CopiesShareParsedTree) {
  auto t = Template::Parse("{{ input.answer }}", "n");
  ASSERT_TRUE(t.ok());
  Template copy = *t;
  EXPECT_EQ(copy.name(), "n");
  EXPECT_EQ(copy.source(), "{{ input.answer }}");
  EXPECT_EQ(*copy.Render(kCtx), "C");
}

}  // namespace
}  // namespace matrix::config
