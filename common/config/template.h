// Prompt templates: the subset of Jinja that prompt authors use, over the
// expression language of expr.h.
//
//   {{ expr }}                          value of expr (see ToDisplayString)
//   {{ x | join(", ") }}                filters are functions: x | f(a) == f(x, a)
//   {% if c %}..{% elif c %}..{% else %}..{% endif %}
//   {% for x in list %}..{% else %}..{% endfor %}   else: the list was empty
//   {% for k, v in obj.items() %}       also `for k, v in obj` and lists of pairs
//       loop.index loop.index0 loop.first loop.last loop.length
//       loop.revindex loop.revindex0
//   {% set x = expr %}                  in a loop body: for that iteration only
//   {% raw %}..{% endraw %}             text copied verbatim
//   {# comment #}
//   {{- / -}} {%- / -%} {#- / -#}       strip whitespace (newlines too) before / after
//
// Rendering is strict: a path that does not resolve is an error naming the
// template, the line and the path ("roles.teacher.prompt:2: undefined
// 'input.hint'"), except inside default() / `| default(...)` and `is defined`.
// Whitespace is otherwise kept exactly as written (Jinja's defaults: no
// trim_blocks, no lstrip_blocks).
//
// Thread-safety: a Template is immutable after Parse; copies share the parsed
// tree and may render concurrently from any number of threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/base/json.h"
#include "common/base/status.h"

namespace matrix::config {

inline constexpr size_t kMaxTemplateBytes = 1024 * 1024;
inline constexpr size_t kMaxRenderedBytes = 16 * 1024 * 1024;
inline constexpr int kMaxTemplateNesting = 64;

class Template {
 public:
  // Parses `source`; `name` is used in messages ("<template>" when empty).
  // Errors read "<name>:<line>: <what>" where line is 1-based in `source`.
  static StatusOr<Template> Parse(std::string_view source, std::string name = "");

  // Renders with `ctx`'s top-level keys as variables. Errors read
  // "<name>:<line>: <what>".
  StatusOr<std::string> Render(const Json& ctx) const;

  const std::string& name() const;
  const std::string& source() const;

  // Like Parse; on failure also stores the 1-based line of the error in
  // *error_line, for callers that map template lines onto an enclosing file.
  static StatusOr<Template> ParseWithLine(std::string_view source, std::string name, int* error_line);

 private:
  struct Impl;
  explicit Template(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // never null
};

}  // namespace matrix::config
