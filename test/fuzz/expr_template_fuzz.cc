// Fuzz target for the expression language and prompt templates
// (common/config/expr.h, template.h). Every input is parsed both as an
// expression and as a template, and whatever parses is evaluated (lenient,
// strict and as a condition) or rendered over one fixed context shaped like a
// task's: input row, vars, counters, history, branches. Properties checked
// besides "no crash, no sanitizer report, no escaping exception": parse errors
// locate themselves inside the input, and results print as text and JSON.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/config/expr.h"
#include "common/config/template.h"
#include "test/fuzz/fuzz_check.h"

namespace {

using matrix::Json;
using namespace matrix::config;

const Json& Context() {
  static const Json ctx = Json::parse(R"json({
    "input": {"question": "Which is prime?", "options": ["4", "6", "7", "9"], "answer": "C",
              "question_id": 17, "meta": {"a": 1, "b": [2, 3.5], "c": null, "d": {"e": "f"}},
              "empty": [], "blank": "", "name": "  Ada Lovelace  ", "unicode": "caf\u00e9 \u2713 \ud83d\ude00",
              "score": -2.5, "big": 9223372036854775807, "small": -9223372036854775808,
              "flag": false, "json": "{\"best\": 2, \"confidence\": 0.9}"},
    "vars": {"teacher_answer": "C", "student_answer": "B", "agreement": false, "score": 0.75,
             "best": 2, "confidence": 0.1, "final": null, "list": [3, 1, 2, 1]},
    "counters": {"turns": 4, "steps": 12, "retries": 0},
    "last": {"role": "student", "content": "I think the answer is (B)."},
    "last_turn": {"role": "extractor", "content": "The answer is (C)"},
    "history": [{"role": "teacher", "content": "hi", "tokens": 3},
                {"role": "student", "content": "hello", "tokens": 5}],
    "branches": [{"vars": {"answer": "A"}}, {"vars": {"answer": "C"}}, {"vars": {}}],
    "params": {"samples": 4, "name": "best_of_n"}
  })json");
  return ctx;
}

void Consume(const Json& v) {
  std::string text = ToDisplayString(v);
  std::string json = matrix::DumpJson(v);
  FUZZ_CHECK(!json.empty());
  (void)IsTruthy(v);
  (void)text;
}

void FuzzExpr(std::string_view text, const Json& ctx) {
  size_t error_offset = 0;
  auto expr = Expr::Parse(text, &error_offset);
  if (!expr.ok()) {
    FUZZ_CHECK(error_offset <= text.size());
    FUZZ_CHECK(!expr.status().message().empty());
    return;
  }
  FUZZ_CHECK(expr->text() == text);
  auto lenient = expr->Eval(ctx);
  if (lenient.ok()) Consume(*lenient);
  auto strict = expr->EvalStrict(ctx);
  if (strict.ok()) {
    Consume(*strict);
    // Lenient evaluation only turns failures on undefined paths into null; where
    // strict evaluation succeeds, lenient evaluation does too.
    FUZZ_CHECK(lenient.ok());
  }
  (void)expr->EvalBool(ctx);
}

void FuzzTemplate(std::string_view source, const Json& ctx) {
  int error_line = 0;
  auto tmpl = Template::ParseWithLine(source, "fuzz", &error_line);
  if (!tmpl.ok()) {
    size_t lines = 1;
    for (char c : source) lines += c == '\n';
    FUZZ_CHECK(error_line >= 1 && static_cast<size_t>(error_line) <= lines);
    return;
  }
  FUZZ_CHECK(tmpl->source() == source);
  auto out = tmpl->Render(ctx);
  if (out.ok()) FUZZ_CHECK(out->size() <= kMaxRenderedBytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const Json& ctx = Context();
  FuzzExpr(text, ctx);
  FuzzTemplate(text, ctx);
  return 0;
}
