// Template engine: splits the source into text, {{ }} and {% %} pieces
// (applying whitespace control), builds a tree of statements, and renders it
// with the expression evaluator in strict mode.
// Thread-safety: parsed trees are shared read-only; rendering state lives on
// the calling thread's stack.
#include "common/config/template.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <vector>

#include "common/config/expr.h"

namespace matrix::config {

namespace template_detail {

struct TNode;

struct Branch {
  std::optional<Expr> cond;  // nullopt: the else branch
  int line = 1;              // line of the if/elif/else tag
  std::vector<TNode> body;
};

// Invariants: kText has text; kOutput has expr; kIf has branches (an else
// branch only last); kFor has expr (the iterable), vars (1 or 2 names), body
// and else_body; kSet has vars[0] and expr.
struct TNode {
  enum class Kind { kText, kOutput, kIf, kFor, kSet } kind = Kind::kText;
  int line = 1;
  std::string text;
  std::optional<Expr> expr;
  std::vector<std::string> vars;
  std::vector<Branch> branches;
  std::vector<TNode> body;
  std::vector<TNode> else_body;
};

}  // namespace template_detail

using template_detail::Branch;
using template_detail::TNode;

struct Template::Impl {
  std::string name;
  std::string source;
  std::vector<TNode> nodes;
};

namespace {

struct Piece {
  enum class Kind { kText, kOutput, kTag } kind = Piece::Kind::kText;
  std::string content;   // text, or the inside of the delimiters
  size_t offset = 0;     // byte offset of content in the source
  int line = 1;          // line of the opening delimiter
};

bool IsSpace(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

class TemplateParser {
 public:
  TemplateParser(std::string_view src, std::string name) : src_(src), name_(std::move(name)) {
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') newlines_.push_back(i);
    }
  }

  bool Run(std::vector<TNode>* out) {
    if (!Split()) return false;
    std::string stopped_by;
    size_t stop_piece = 0;
    return ParseBody(out, {}, &stopped_by, &stop_piece, 0);
  }

  const std::string& error() const { return error_; }
  int error_line() const { return error_line_; }

 private:
  int LineAt(size_t offset) const {
    return 1 + static_cast<int>(std::lower_bound(newlines_.begin(), newlines_.end(), offset) -
                                newlines_.begin());
  }

  bool Fail(int line, const std::string& msg) {
    if (error_.empty()) {
      error_line_ = line;
      error_ = name_ + ":" + std::to_string(line) + ": " + msg;
    }
    return false;
  }

  // Finds the closing delimiter `close` ("}}" or "%}") of a tag whose content
  // starts at `from`, skipping quoted strings and nested braces.
  size_t FindClose(size_t from, std::string_view close) const {
    int braces = 0;
    char quote = 0;
    for (size_t i = from; i < src_.size(); ++i) {
      char c = src_[i];
      if (quote != 0) {
        if (c == '\\') {
          ++i;
        } else if (c == quote) {
          quote = 0;
        }
        continue;
      }
      if (c == '"' || c == '\'') {
        quote = c;
      } else if (braces == 0 && src_.compare(i, close.size(), close) == 0) {
        return i;
      } else if (c == '{') {
        ++braces;
      } else if (c == '}' && braces > 0) {
        --braces;
      }
    }
    return std::string_view::npos;
  }

  static void RStrip(std::string* s) {
    while (!s->empty() && IsSpace(s->back())) s->pop_back();
  }

  void AddText(std::string_view text, bool lstrip) {
    size_t b = 0;
    if (lstrip) {
      while (b < text.size() && IsSpace(text[b])) ++b;
    }
    if (b >= text.size()) return;
    Piece p;
    p.kind = Piece::Kind::kText;
    p.content = std::string(text.substr(b));
    p.offset = static_cast<size_t>(text.data() - src_.data()) + b;
    p.line = LineAt(p.offset);
    pieces_.push_back(std::move(p));
  }

  // Strips trailing whitespace of the text piece just before a `{{-`-style tag.
  void StripPrevious() {
    if (pieces_.empty() || pieces_.back().kind != Piece::Kind::kText) return;
    RStrip(&pieces_.back().content);
    if (pieces_.back().content.empty()) pieces_.pop_back();
  }

  bool Split() {
    size_t pos = 0;
    bool lstrip = false;
    while (pos < src_.size()) {
      size_t open = src_.find('{', pos);
      while (open != std::string_view::npos && open + 1 < src_.size() &&
             src_[open + 1] != '{' && src_[open + 1] != '%' && src_[open + 1] != '#') {
        open = src_.find('{', open + 1);
      }
      if (open == std::string_view::npos || open + 1 >= src_.size()) {
        AddText(src_.substr(pos), lstrip);
        return true;
      }
      AddText(src_.substr(pos, open - pos), lstrip);
      lstrip = false;
      char kind = src_[open + 1];
      int line = LineAt(open);
      size_t body = open + 2;
      if (body < src_.size() && src_[body] == '-') {
        StripPrevious();
        ++body;
      }
      if (kind == '#') {
        size_t close = src_.find("#}", body);
        if (close == std::string_view::npos) return Fail(line, "comment '{#' is never closed");
        lstrip = close > body && src_[close - 1] == '-';
        pos = close + 2;
        continue;
      }
      std::string_view closer = kind == '{' ? "}}" : "%}";
      size_t close = FindClose(body, closer);
      if (close == std::string_view::npos) {
        return Fail(line, std::string("'{") + kind + "' is never closed (expected '" +
                              std::string(closer) + "')");
      }
      size_t content_end = close;
      if (content_end > body && src_[content_end - 1] == '-') {
        --content_end;
        lstrip = true;
      }
      Piece p;
      p.kind = kind == '{' ? Piece::Kind::kOutput : Piece::Kind::kTag;
      p.content = std::string(src_.substr(body, content_end - body));
      p.offset = body;
      p.line = line;
      pos = close + 2;
      if (p.kind == Piece::Kind::kTag && Keyword(p.content) == "raw") {
        if (!ReadRaw(&pos, &lstrip, line)) return false;
        continue;
      }
      pieces_.push_back(std::move(p));
    }
    return true;
  }

  // After `{% raw %}`: copies text up to `{% endraw %}` verbatim.
  bool ReadRaw(size_t* pos, bool* lstrip, int line) {
    size_t search = *pos;
    while (true) {
      size_t open = src_.find("{%", search);
      if (open == std::string_view::npos) return Fail(line, "'raw' is never closed (expected 'endraw')");
      size_t i = open + 2;
      bool strip_before = i < src_.size() && src_[i] == '-';
      if (strip_before) ++i;
      while (i < src_.size() && IsSpace(src_[i])) ++i;
      if (src_.compare(i, 6, "endraw") != 0) {
        search = open + 2;
        continue;
      }
      i += 6;
      while (i < src_.size() && IsSpace(src_[i])) ++i;
      bool strip_after = i < src_.size() && src_[i] == '-';
      if (strip_after) ++i;
      if (src_.compare(i, 2, "%}") != 0) {
        search = open + 2;
        continue;
      }
      std::string_view raw = src_.substr(*pos, open - *pos);
      AddText(raw, *lstrip);
      if (strip_before) StripPrevious();
      *lstrip = strip_after;
      *pos = i + 2;
      return true;
    }
  }

  static std::string Keyword(std::string_view content) {
    size_t b = 0;
    while (b < content.size() && IsSpace(content[b])) ++b;
    size_t e = b;
    while (e < content.size() && (std::isalnum(static_cast<unsigned char>(content[e])) || content[e] == '_')) ++e;
    return std::string(content.substr(b, e - b));
  }

  // Parses `text` (found at source offset `offset`) as an expression.
  std::optional<Expr> ParseExpr(std::string_view text, size_t offset) {
    while (!text.empty() && IsSpace(text.front())) {
      text.remove_prefix(1);
      ++offset;
    }
    while (!text.empty() && IsSpace(text.back())) text.remove_suffix(1);
    size_t err = 0;
    auto e = Expr::Parse(text, &err);
    if (!e.ok()) {
      Fail(LineAt(offset + err), e.status().message());
      return std::nullopt;
    }
    return std::move(e).value();
  }

  // The part of a tag after its keyword, with its source offset.
  static std::string_view AfterKeyword(const Piece& p, size_t* offset) {
    std::string_view c = p.content;
    size_t b = 0;
    while (b < c.size() && IsSpace(c[b])) ++b;
    while (b < c.size() && (std::isalnum(static_cast<unsigned char>(c[b])) || c[b] == '_')) ++b;
    *offset = p.offset + b;
    return c.substr(b);
  }

  static bool Blank(std::string_view s) {
    return std::all_of(s.begin(), s.end(), IsSpace);
  }

  static bool ReadName(std::string_view s, size_t* i, std::string* name) {
    while (*i < s.size() && IsSpace(s[*i])) ++*i;
    size_t b = *i;
    if (*i < s.size() && (std::isalpha(static_cast<unsigned char>(s[*i])) || s[*i] == '_')) {
      while (*i < s.size() && (std::isalnum(static_cast<unsigned char>(s[*i])) || s[*i] == '_')) ++*i;
    }
    *name = std::string(s.substr(b, *i - b));
    return !name->empty();
  }

  // Parses pieces into `out` until a tag whose keyword is in `stop` (consumed;
  // reported in *stopped_by and *stop_piece) or the end of input.
  bool ParseBody(std::vector<TNode>* out, const std::vector<std::string>& stop, std::string* stopped_by,
                 size_t* stop_piece, int depth) {
    if (depth > kMaxTemplateNesting) {
      return Fail(idx_ < pieces_.size() ? pieces_[idx_].line : 1, "blocks nested too deeply");
    }
    while (idx_ < pieces_.size()) {
      const Piece& p = pieces_[idx_++];
      if (p.kind == Piece::Kind::kText) {
        TNode n;
        n.kind = TNode::Kind::kText;
        n.line = p.line;
        n.text = p.content;
        out->push_back(std::move(n));
        continue;
      }
      if (p.kind == Piece::Kind::kOutput) {
        TNode n;
        n.kind = TNode::Kind::kOutput;
        n.line = p.line;
        if (Blank(p.content)) return Fail(p.line, "empty '{{ }}'");
        n.expr = ParseExpr(p.content, p.offset);
        if (!n.expr) return false;
        out->push_back(std::move(n));
        continue;
      }
      std::string kw = Keyword(p.content);
      if (std::find(stop.begin(), stop.end(), kw) != stop.end()) {
        *stopped_by = kw;
        *stop_piece = idx_ - 1;
        return true;
      }
      size_t rest_offset = 0;
      std::string_view rest = AfterKeyword(p, &rest_offset);
      if (kw == "if") {
        TNode n;
        n.kind = TNode::Kind::kIf;
        n.line = p.line;
        std::string by = "if";
        size_t cond_piece = idx_ - 1;
        while (true) {
          Branch br;
          br.line = pieces_[cond_piece].line;
          if (by != "else") {
            const Piece& cp = pieces_[cond_piece];
            size_t off = 0;
            std::string_view cond = AfterKeyword(cp, &off);
            if (Blank(cond)) return Fail(cp.line, "'" + by + "' needs a condition");
            br.cond = ParseExpr(cond, off);
            if (!br.cond) return false;
          } else if (!Blank(AfterKeyword(pieces_[cond_piece], &rest_offset))) {
            return Fail(pieces_[cond_piece].line, "unexpected text after 'else'");
          }
          std::string next;
          size_t next_piece = 0;
          std::vector<std::string> stops = by == "else" ? std::vector<std::string>{"endif"}
                                                        : std::vector<std::string>{"elif", "else", "endif"};
          if (!ParseBody(&br.body, stops, &next, &next_piece, depth + 1)) return false;
          n.branches.push_back(std::move(br));
          if (next.empty()) return Fail(p.line, "'if' is never closed (expected 'endif')");
          if (next == "endif") {
            if (!Blank(AfterKeyword(pieces_[next_piece], &rest_offset))) {
              return Fail(pieces_[next_piece].line, "unexpected text after 'endif'");
            }
            break;
          }
          by = next;
          cond_piece = next_piece;
        }
        out->push_back(std::move(n));
      } else if (kw == "for") {
        TNode n;
        n.kind = TNode::Kind::kFor;
        n.line = p.line;
        size_t i = 0;
        std::string name;
        if (!ReadName(rest, &i, &name)) return Fail(p.line, "expected a loop variable after 'for'");
        n.vars.push_back(name);
        while (i < rest.size() && IsSpace(rest[i])) ++i;
        if (i < rest.size() && rest[i] == ',') {
          ++i;
          if (!ReadName(rest, &i, &name)) return Fail(p.line, "expected a second loop variable after ','");
          n.vars.push_back(name);
        }
        std::string in_word;
        if (!ReadName(rest, &i, &in_word) || in_word != "in") {
          return Fail(p.line, "expected 'in' after the loop variable(s)");
        }
        std::string_view iter = rest.substr(i);
        if (Blank(iter)) return Fail(p.line, "expected a list to iterate after 'in'");
        n.expr = ParseExpr(iter, rest_offset + i);
        if (!n.expr) return false;
        std::string next;
        size_t next_piece = 0;
        if (!ParseBody(&n.body, {"else", "endfor"}, &next, &next_piece, depth + 1)) return false;
        if (next == "else") {
          if (!ParseBody(&n.else_body, {"endfor"}, &next, &next_piece, depth + 1)) return false;
          if (next != "endfor") next.clear();
        }
        if (next.empty()) return Fail(p.line, "'for' is never closed (expected 'endfor')");
        out->push_back(std::move(n));
      } else if (kw == "set") {
        TNode n;
        n.kind = TNode::Kind::kSet;
        n.line = p.line;
        size_t i = 0;
        std::string name;
        if (!ReadName(rest, &i, &name)) return Fail(p.line, "expected a variable name after 'set'");
        while (i < rest.size() && IsSpace(rest[i])) ++i;
        if (i >= rest.size() || rest[i] != '=' || (i + 1 < rest.size() && rest[i + 1] == '=')) {
          return Fail(p.line, "expected '=' after 'set " + name + "'");
        }
        ++i;
        std::string_view value = rest.substr(i);
        if (Blank(value)) return Fail(p.line, "expected a value after '='");
        n.vars.push_back(name);
        n.expr = ParseExpr(value, rest_offset + i);
        if (!n.expr) return false;
        out->push_back(std::move(n));
      } else if (kw == "elif" || kw == "else" || kw == "endif" || kw == "endfor" || kw == "endraw") {
        return Fail(p.line, "unexpected '" + kw + "'");
      } else if (kw.empty()) {
        return Fail(p.line, "empty '{% %}'");
      } else {
        return Fail(p.line, "unknown tag '" + kw +
                                "' (supported: if, elif, else, endif, for, endfor, set, raw)");
      }
    }
    stopped_by->clear();
    return true;
  }

  std::string_view src_;
  std::string name_;
  std::vector<size_t> newlines_;
  std::vector<Piece> pieces_;
  size_t idx_ = 0;
  std::string error_;
  int error_line_ = 0;
};

class Renderer {
 public:
  explicit Renderer(const std::string& name) : name_(name) {}

  Status Render(const std::vector<TNode>& nodes, Scope* scope, std::string* out) {
    for (const TNode& n : nodes) {
      switch (n.kind) {
        case TNode::Kind::kText:
          out->append(n.text);
          break;
        case TNode::Kind::kOutput: {
          MATRIX_ASSIGN_OR_RETURN(Json v, Eval(*n.expr, *scope, n.line));
          out->append(ToDisplayString(v));
          break;
        }
        case TNode::Kind::kSet: {
          MATRIX_ASSIGN_OR_RETURN(Json v, Eval(*n.expr, *scope, n.line));
          scope->Set(n.vars[0], std::move(v));
          break;
        }
        case TNode::Kind::kIf:
          for (const Branch& br : n.branches) {
            bool take = true;
            if (br.cond) {
              MATRIX_ASSIGN_OR_RETURN(Json c, Eval(*br.cond, *scope, br.line));
              take = IsTruthy(c);
            }
            if (take) {
              MATRIX_RETURN_IF_ERROR(Render(br.body, scope, out));
              break;
            }
          }
          break;
        case TNode::Kind::kFor:
          MATRIX_RETURN_IF_ERROR(RenderFor(n, scope, out));
          break;
      }
      if (out->size() > kMaxRenderedBytes) {
        return ResourceExhausted(name_ + ":" + std::to_string(n.line) + ": output exceeds " +
                                 std::to_string(kMaxRenderedBytes) + " bytes");
      }
    }
    return Status::Ok();
  }

 private:
  StatusOr<Json> Eval(const Expr& e, const Scope& scope, int line) {
    auto v = e.Eval(scope, EvalMode::kStrict);
    if (!v.ok()) {
      return Status(v.status().code(), name_ + ":" + std::to_string(line) + ": " + v.status().message());
    }
    return v;
  }

  Status RenderFor(const TNode& n, Scope* scope, std::string* out) {
    MATRIX_ASSIGN_OR_RETURN(Json seq, Eval(*n.expr, *scope, n.line));
    bool pairs = n.vars.size() == 2;
    std::vector<std::pair<Json, Json>> items;  // (first var, second var)
    if (seq.is_array()) {
      for (auto& e : seq) {
        if (!pairs) {
          items.emplace_back(std::move(e), Json());
        } else if (e.is_array() && e.size() == 2) {
          items.emplace_back(std::move(e[0]), std::move(e[1]));
        } else {
          return InvalidArgument(name_ + ":" + std::to_string(n.line) +
                                 ": two loop variables need a list of pairs or an object");
        }
      }
    } else if (seq.is_object()) {
      for (auto it = seq.begin(); it != seq.end(); ++it) {
        items.emplace_back(Json(it.key()), pairs ? std::move(it.value()) : Json());
      }
    } else {
      std::string type = seq.is_null() ? "null" : seq.is_string() ? "a string" : "a " + std::string(seq.type_name());
      return InvalidArgument(name_ + ":" + std::to_string(n.line) + ": cannot iterate over " + type +
                             " ('" + n.expr->text() + "')");
    }
    if (items.empty()) return Render(n.else_body, scope, out);
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      Scope inner(scope);
      inner.Set("loop", Json{{"index", i + 1},
                             {"index0", i},
                             {"first", i == 0},
                             {"last", i == len - 1},
                             {"length", len},
                             {"revindex", len - i},
                             {"revindex0", len - i - 1}});
      inner.Set(n.vars[0], std::move(items[static_cast<size_t>(i)].first));
      if (pairs) inner.Set(n.vars[1], std::move(items[static_cast<size_t>(i)].second));
      MATRIX_RETURN_IF_ERROR(Render(n.body, &inner, out));
    }
    return Status::Ok();
  }

  const std::string& name_;
};

}  // namespace

StatusOr<Template> Template::Parse(std::string_view source, std::string name) {
  int line = 0;
  return ParseWithLine(source, std::move(name), &line);
}

StatusOr<Template> Template::ParseWithLine(std::string_view source, std::string name, int* error_line) {
  *error_line = 0;
  if (name.empty()) name = "<template>";
  if (source.size() > kMaxTemplateBytes) {
    *error_line = 1;
    return InvalidArgument(name + ":1: template of " + std::to_string(source.size()) +
                           " bytes exceeds the limit of " + std::to_string(kMaxTemplateBytes));
  }
  auto impl = std::make_shared<Impl>();
  impl->name = name;
  impl->source = std::string(source);
  TemplateParser parser(impl->source, name);
  if (!parser.Run(&impl->nodes)) {
    *error_line = parser.error_line();
    return InvalidArgument(parser.error());
  }
  return Template(std::move(impl));
}

StatusOr<std::string> Template::Render(const Json& ctx) const {
  Scope root(ctx);
  Renderer r(impl_->name);
  std::string out;
  MATRIX_RETURN_IF_ERROR(r.Render(impl_->nodes, &root, &out));
  return out;
}

const std::string& Template::name() const { return impl_->name; }
const std::string& Template::source() const { return impl_->source; }

}  // namespace matrix::config
