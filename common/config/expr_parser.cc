// Parsing of expressions by the grammar in expr.h, one function per level.
#include "common/config/expr_parser.h"

#include <algorithm>
#include <initializer_list>
#include <utility>
#include <vector>

#include "common/config/expr.h"
#include "common/config/expr_builtins.h"
#include "common/config/expr_values.h"

namespace matrix::config::expr_internal {
namespace {

const char* const kTests[] = {"defined", "undefined", "none", "string", "number", "integer",
                              "float", "boolean", "list", "mapping", "even", "odd"};

class Parser {
 public:
  Parser(std::string_view text, SyntaxError* error) : text_(text), error_(error) {}

  std::unique_ptr<Node> Run() {
    if (!Lex(text_, &tokens_, error_)) return nullptr;
    auto root = ParseExpr();
    if (!root) return nullptr;
    if (Peek().kind != Token::kEnd) {
      Fail(Peek().pos, "expected end of expression but found " + Describe(Peek()));
      return nullptr;
    }
    return root;
  }

 private:
  // --- token access ---
  const Token& Peek(size_t ahead = 0) const {
    size_t i = std::min(idx_ + ahead, tokens_.size() - 1);
    return tokens_[i];
  }
  const Token& Next() {
    const Token& t = tokens_[idx_];
    if (idx_ + 1 < tokens_.size()) ++idx_;
    return t;
  }
  bool IsOp(const char* op, size_t ahead = 0) const {
    const Token& t = Peek(ahead);
    return t.kind == Token::kOp && t.text == op;
  }
  bool IsWord(const char* w, size_t ahead = 0) const {
    const Token& t = Peek(ahead);
    return t.kind == Token::kIdent && t.text == w;
  }
  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case Token::kEnd: return "end of input";
      case Token::kString: return "string " + Quote(t.text);
      case Token::kInt:
      case Token::kFloat: return "number " + t.text;
      default: return "'" + t.text + "'";
    }
  }
  bool Fail(size_t pos, std::string msg) { return error_->Set(pos, std::move(msg)); }
  std::unique_ptr<Node> FailNode(size_t pos, std::string msg) {
    Fail(pos, std::move(msg));
    return nullptr;
  }
  bool Expect(const char* op, const char* context) {
    if (IsOp(op)) {
      Next();
      return true;
    }
    return Fail(Peek().pos, std::string("expected '") + op + "'" + context + " but found " + Describe(Peek()));
  }

  // Finishes a node spanning [start, end of the previous token).
  std::unique_ptr<Node> Finish(std::unique_ptr<Node> n, size_t start) {
    size_t end = idx_ > 0 ? std::max(start, tokens_[idx_ - 1].end) : start;
    n->src = std::string(text_.substr(start, end - start));
    int d = 0;
    for (const auto& k : n->kids) {
      if (k) d = std::max(d, k->depth);
    }
    n->depth = d + 1;
    if (n->depth > kMaxExprDepth) return FailNode(start, "expression nested too deeply");
    return n;
  }

  static std::unique_ptr<Node> Make(NodeKind kind) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    return n;
  }

  struct DepthGuard {
    explicit DepthGuard(int* d) : d_(d) { ++*d_; }
    ~DepthGuard() { --*d_; }
    int* d_;
  };
  bool TooDeep() {
    if (depth_ <= kMaxExprDepth) return false;
    Fail(Peek().pos, "expression nested too deeply");
    return true;
  }

  // --- grammar ---
  std::unique_ptr<Node> ParseExpr() {
    DepthGuard g(&depth_);
    if (TooDeep()) return nullptr;
    size_t start = Peek().pos;
    auto value = ParseOr();
    if (!value) return nullptr;
    if (!IsWord("if")) return value;
    Next();
    auto cond = ParseOr();
    if (!cond) return nullptr;
    std::unique_ptr<Node> other;
    if (IsWord("else")) {
      Next();
      other = ParseExpr();
      if (!other) return nullptr;
    }
    auto n = Make(NodeKind::kTernary);
    n->kids.push_back(std::move(value));
    n->kids.push_back(std::move(cond));
    n->kids.push_back(std::move(other));
    return Finish(std::move(n), start);
  }

  std::unique_ptr<Node> ParseOr() {
    size_t start = Peek().pos;
    auto l = ParseAnd();
    while (l && (IsWord("or") || IsOp("||"))) {
      Next();
      auto r = ParseAnd();
      if (!r) return nullptr;
      auto n = Make(NodeKind::kOr);
      n->kids.push_back(std::move(l));
      n->kids.push_back(std::move(r));
      l = Finish(std::move(n), start);
    }
    return l;
  }

  std::unique_ptr<Node> ParseAnd() {
    size_t start = Peek().pos;
    auto l = ParseNot();
    while (l && (IsWord("and") || IsOp("&&"))) {
      Next();
      auto r = ParseNot();
      if (!r) return nullptr;
      auto n = Make(NodeKind::kAnd);
      n->kids.push_back(std::move(l));
      n->kids.push_back(std::move(r));
      l = Finish(std::move(n), start);
    }
    return l;
  }

  std::unique_ptr<Node> ParseNot() {
    DepthGuard g(&depth_);
    if (TooDeep()) return nullptr;
    size_t start = Peek().pos;
    if (IsWord("not") || IsOp("!")) {
      Next();
      auto operand = ParseNot();
      if (!operand) return nullptr;
      auto n = Make(NodeKind::kUnary);
      n->un = UnOp::kNot;
      n->kids.push_back(std::move(operand));
      return Finish(std::move(n), start);
    }
    return ParseComparison();
  }

  std::unique_ptr<Node> ParseComparison() {
    size_t start = Peek().pos;
    auto l = ParseConcat();
    if (!l) return nullptr;
    if (IsWord("is")) {
      Next();
      bool negate = false;
      if (IsWord("not")) {
        Next();
        negate = true;
      }
      const Token& t = Peek();
      bool known = false;
      if (t.kind == Token::kIdent) {
        for (const char* name : kTests) known = known || t.text == name;
      }
      if (!known) return FailNode(t.pos, "expected a test name after 'is' (defined, none, string, ...) but found " + Describe(t));
      auto n = Make(NodeKind::kTest);
      n->name = Next().text;
      n->negate = negate;
      n->kids.push_back(std::move(l));
      return Finish(std::move(n), start);
    }
    BinOp op;
    size_t skip = 1;
    if (IsOp("==")) op = BinOp::kEq;
    else if (IsOp("!=")) op = BinOp::kNe;
    else if (IsOp("<")) op = BinOp::kLt;
    else if (IsOp("<=")) op = BinOp::kLe;
    else if (IsOp(">")) op = BinOp::kGt;
    else if (IsOp(">=")) op = BinOp::kGe;
    else if (IsOp("=~")) op = BinOp::kMatch;
    else if (IsOp("!~")) op = BinOp::kNotMatch;
    else if (IsWord("in")) op = BinOp::kIn;
    else if (IsWord("not") && IsWord("in", 1)) {
      op = BinOp::kNotIn;
      skip = 2;
    } else {
      return l;
    }
    for (size_t k = 0; k < skip; ++k) Next();
    auto r = ParseConcat();
    if (!r) return nullptr;
    auto n = Make(NodeKind::kBinary);
    n->bin = op;
    if ((op == BinOp::kMatch || op == BinOp::kNotMatch) && r->kind == NodeKind::kLiteral) {
      if (!r->value.is_string()) return FailNode(Peek().pos, "a regex pattern must be a string");
      auto re = CompileRegex(r->value.get<std::string>());
      if (!re.ok()) return FailNode(tokens_[idx_ - 1].pos, re.status().message());
      n->re = std::move(re).value();
    }
    n->kids.push_back(std::move(l));
    n->kids.push_back(std::move(r));
    auto out = Finish(std::move(n), start);
    if (out && (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp("<=") || IsOp(">") || IsOp(">="))) {
      return FailNode(Peek().pos, "comparisons cannot be chained; use 'and'");
    }
    return out;
  }

  template <typename Sub>
  std::unique_ptr<Node> ParseLeftAssoc(Sub sub, std::initializer_list<std::pair<const char*, BinOp>> ops) {
    size_t start = Peek().pos;
    auto l = (this->*sub)();
    while (l) {
      const std::pair<const char*, BinOp>* hit = nullptr;
      for (const auto& o : ops) {
        if (IsOp(o.first)) hit = &o;
      }
      if (hit == nullptr) break;
      Next();
      auto r = (this->*sub)();
      if (!r) return nullptr;
      auto n = Make(NodeKind::kBinary);
      n->bin = hit->second;
      n->kids.push_back(std::move(l));
      n->kids.push_back(std::move(r));
      l = Finish(std::move(n), start);
    }
    return l;
  }

  std::unique_ptr<Node> ParseConcat() { return ParseLeftAssoc(&Parser::ParseSum, {{"~", BinOp::kConcat}}); }
  std::unique_ptr<Node> ParseSum() {
    return ParseLeftAssoc(&Parser::ParseProduct, {{"+", BinOp::kAdd}, {"-", BinOp::kSub}});
  }
  std::unique_ptr<Node> ParseProduct() {
    return ParseLeftAssoc(&Parser::ParseUnary, {{"*", BinOp::kMul}, {"/", BinOp::kDiv},
                                                {"//", BinOp::kFloorDiv}, {"%", BinOp::kMod}});
  }

  std::unique_ptr<Node> ParseUnary() {
    DepthGuard g(&depth_);
    if (TooDeep()) return nullptr;
    size_t start = Peek().pos;
    if (IsOp("-") || IsOp("+")) {
      bool neg = Next().text == "-";
      auto operand = ParseUnary();
      if (!operand) return nullptr;
      if (neg && operand->kind == NodeKind::kLiteral && operand->value.is_number()) {
        // Fold "-3" into a literal.
        if (operand->value.is_number_integer()) {
          operand->value = -operand->value.get<int64_t>();
        } else {
          operand->value = -operand->value.get<double>();
        }
        return Finish(std::move(operand), start);
      }
      auto n = Make(NodeKind::kUnary);
      n->un = neg ? UnOp::kNeg : UnOp::kPos;
      n->kids.push_back(std::move(operand));
      return Finish(std::move(n), start);
    }
    return ParsePostfix();
  }

  // Arguments after '(' has been consumed, up to and including ')'.
  bool ParseArgs(std::vector<std::unique_ptr<Node>>* out) {
    if (IsOp(")")) {
      Next();
      return true;
    }
    while (true) {
      auto a = ParseExpr();
      if (!a) return false;
      out->push_back(std::move(a));
      if (IsOp(",")) {
        Next();
        continue;
      }
      return Expect(")", " after function arguments");
    }
  }

  // A call of function `name` (token at name_pos) whose first argument, for
  // methods and filters, is `self`.
  std::unique_ptr<Node> ParseCall(const std::string& name, size_t name_pos, size_t start,
                                  std::unique_ptr<Node> self, bool has_parens) {
    int fn = FindFunction(name);
    if (fn < 0) return FailNode(name_pos, "unknown function '" + name + "'");
    auto n = Make(NodeKind::kCall);
    n->fn = fn;
    n->name = name;
    if (self) n->kids.push_back(std::move(self));
    if (has_parens && !ParseArgs(&n->kids)) return nullptr;
    const FuncDef& f = FunctionAt(fn);
    int argc = static_cast<int>(n->kids.size());
    if (argc < f.min_args || (f.max_args >= 0 && argc > f.max_args)) {
      std::string want = f.min_args == f.max_args ? std::to_string(f.min_args)
                         : f.max_args < 0         ? std::to_string(f.min_args) + " or more"
                                                  : std::to_string(f.min_args) + " to " + std::to_string(f.max_args);
      return FailNode(name_pos, name + "() takes " + want + " argument(s), got " + std::to_string(argc));
    }
    if (name == "regex" && n->kids[1]->kind == NodeKind::kLiteral) {
      if (!n->kids[1]->value.is_string()) return FailNode(name_pos, "regex() pattern must be a string");
      auto re = CompileRegex(n->kids[1]->value.get<std::string>());
      if (!re.ok()) return FailNode(name_pos, re.status().message());
      n->re = std::move(re).value();
    }
    return Finish(std::move(n), start);
  }

  std::unique_ptr<Node> ParsePostfix() {
    size_t start = Peek().pos;
    auto n = ParsePrimary();
    while (n) {
      if (IsOp(".")) {
        Next();
        const Token& t = Peek();
        if (t.kind != Token::kIdent) return FailNode(t.pos, "expected a name after '.' but found " + Describe(t));
        std::string name = Next().text;
        if (IsOp("(")) {
          Next();
          n = ParseCall(name, t.pos, start, std::move(n), true);
          continue;
        }
        auto a = Make(NodeKind::kAttr);
        a->name = name;
        a->kids.push_back(std::move(n));
        n = Finish(std::move(a), start);
      } else if (IsOp("[")) {
        Next();
        std::unique_ptr<Node> lo, hi;
        if (!IsOp(":")) {
          lo = ParseExpr();
          if (!lo) return nullptr;
        }
        if (IsOp(":")) {
          Next();
          if (!IsOp("]")) {
            hi = ParseExpr();
            if (!hi) return nullptr;
          }
          if (!Expect("]", " to close the slice")) return nullptr;
          auto s = Make(NodeKind::kSlice);
          s->kids.push_back(std::move(n));
          s->kids.push_back(std::move(lo));
          s->kids.push_back(std::move(hi));
          n = Finish(std::move(s), start);
          continue;
        }
        if (!Expect("]", " to close the index")) return nullptr;
        auto x = Make(NodeKind::kIndex);
        x->kids.push_back(std::move(n));
        x->kids.push_back(std::move(lo));
        n = Finish(std::move(x), start);
      } else if (IsOp("|")) {
        Next();
        const Token& t = Peek();
        if (t.kind != Token::kIdent) return FailNode(t.pos, "expected a filter name after '|' but found " + Describe(t));
        std::string name = Next().text;
        bool parens = IsOp("(");
        if (parens) Next();
        n = ParseCall(name, t.pos, start, std::move(n), parens);
      } else {
        break;
      }
    }
    return n;
  }

  std::unique_ptr<Node> ParsePrimary() {
    const Token& t = Peek();
    size_t start = t.pos;
    switch (t.kind) {
      case Token::kEnd: return FailNode(t.pos, "expected a value but found end of input");
      case Token::kInt:
      case Token::kFloat:
      case Token::kString: {
        auto n = Make(NodeKind::kLiteral);
        n->value = t.kind == Token::kString ? Json(t.text) : t.value;
        Next();
        return Finish(std::move(n), start);
      }
      case Token::kIdent: {
        const std::string& w = t.text;
        if (w == "true" || w == "True" || w == "false" || w == "False" || w == "null" ||
            w == "none" || w == "None") {
          auto n = Make(NodeKind::kLiteral);
          if (w == "true" || w == "True") n->value = true;
          if (w == "false" || w == "False") n->value = false;
          Next();
          return Finish(std::move(n), start);
        }
        static const char* const kReserved[] = {"and", "or", "not", "in", "is", "if", "else"};
        for (const char* r : kReserved) {
          if (w == r) return FailNode(t.pos, "expected a value but found '" + w + "'");
        }
        std::string name = Next().text;
        if (IsOp("(")) {
          Next();
          return ParseCall(name, start, start, nullptr, true);
        }
        auto n = Make(NodeKind::kName);
        n->name = name;
        return Finish(std::move(n), start);
      }
      case Token::kOp: break;
    }
    if (IsOp("(")) {
      Next();
      auto inner = ParseExpr();
      if (!inner) return nullptr;
      if (!Expect(")", " to close '('")) return nullptr;
      return inner;
    }
    if (IsOp("[")) {
      Next();
      auto n = Make(NodeKind::kList);
      while (!IsOp("]")) {
        auto item = ParseExpr();
        if (!item) return nullptr;
        n->kids.push_back(std::move(item));
        if (IsOp(",")) {
          Next();
          continue;
        }
        if (!IsOp("]")) return FailNode(Peek().pos, "expected ',' or ']' in list but found " + Describe(Peek()));
      }
      Next();
      return Finish(std::move(n), start);
    }
    if (IsOp("{")) {
      Next();
      auto n = Make(NodeKind::kDict);
      while (!IsOp("}")) {
        auto key = ParseExpr();
        if (!key) return nullptr;
        if (!Expect(":", " after an object key")) return nullptr;
        auto value = ParseExpr();
        if (!value) return nullptr;
        n->kids.push_back(std::move(key));
        n->kids.push_back(std::move(value));
        if (IsOp(",")) {
          Next();
          continue;
        }
        if (!IsOp("}")) return FailNode(Peek().pos, "expected ',' or '}' in object but found " + Describe(Peek()));
      }
      Next();
      return Finish(std::move(n), start);
    }
    return FailNode(t.pos, "expected a value but found " + Describe(t));
  }

  std::string_view text_;
  std::vector<Token> tokens_;
  size_t idx_ = 0;
  int depth_ = 0;
  SyntaxError* error_;
};

}  // namespace

std::unique_ptr<Node> ParseTree(std::string_view text, SyntaxError* error) {
  return Parser(text, error).Run();
}

}  // namespace matrix::config::expr_internal
