// Lexing of expression text.
#include "common/config/expr_lexer.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "common/config/expr_values.h"

namespace matrix::config::expr_internal {

bool SyntaxError::Set(size_t pos, std::string msg) {
  if (message.empty()) {
    offset = pos;
    message = "position " + std::to_string(pos + 1) + ": " + std::move(msg);
  }
  return false;
}

namespace {

class Lexer {
 public:
  Lexer(std::string_view text, std::vector<Token>* tokens, SyntaxError* error)
      : text_(text), tokens_(tokens), error_(error) {}

  bool Lex() {
    size_t i = 0;
    const std::string_view s = text_;
    while (true) {
      while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      Token t;
      t.pos = i;
      if (i >= s.size()) {
        t.kind = Token::kEnd;
        t.end = i;
        tokens_->push_back(std::move(t));
        return true;
      }
      char c = s[i];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t b = i;
        bool is_float = false;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
        if (i + 1 < s.size() && s[i] == '.' && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
          is_float = true;
          ++i;
          while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
        }
        if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
          size_t j = i + 1;
          if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
          if (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) {
            is_float = true;
            i = j;
            while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
          }
        }
        if (i < s.size() && (std::isalpha(static_cast<unsigned char>(s[i])) || s[i] == '_')) {
          return Fail(i, "malformed number");
        }
        std::string num(s.substr(b, i - b));
        errno = 0;
        if (is_float) {
          t.kind = Token::kFloat;
          t.value = std::strtod(num.c_str(), nullptr);
        } else {
          t.kind = Token::kInt;
          long long v = std::strtoll(num.c_str(), nullptr, 10);
          if (errno == ERANGE) return Fail(b, "integer literal out of range");
          t.value = static_cast<int64_t>(v);
        }
        t.text = num;
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t b = i;
        while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_')) ++i;
        t.kind = Token::kIdent;
        t.text = std::string(s.substr(b, i - b));
      } else if (c == '"' || c == '\'') {
        t.kind = Token::kString;
        if (!LexString(&i, &t.text)) return false;
      } else {
        static const char* const kOps[] = {"==", "!=", "<=", ">=", "=~", "!~", "&&", "||", "//",
                                           "(", ")", "[", "]", "{", "}", ",", ":", ".", "+", "-",
                                           "*", "/", "%", "<", ">", "!", "|", "~"};
        bool found = false;
        for (const char* op : kOps) {
          size_t n = std::char_traits<char>::length(op);
          if (s.substr(i, n) == op) {
            t.kind = Token::kOp;
            t.text = op;
            i += n;
            found = true;
            break;
          }
        }
        if (!found) {
          if (c == '=') return Fail(i, "unexpected '=' (use '==' to compare)");
          return Fail(i, std::string("unexpected character '") + c + "'");
        }
      }
      t.end = i;
      tokens_->push_back(std::move(t));
    }
  }

  bool LexString(size_t* pos, std::string* out) {
    const std::string_view s = text_;
    char q = s[*pos];
    size_t start = *pos;
    size_t i = *pos + 1;
    while (true) {
      if (i >= s.size()) return Fail(start, "unterminated string");
      char c = s[i];
      if (c == q) {
        ++i;
        break;
      }
      if (c != '\\') {
        out->push_back(c);
        ++i;
        continue;
      }
      if (i + 1 >= s.size()) return Fail(start, "unterminated string");
      char e = s[i + 1];
      i += 2;
      switch (e) {
        case 'n': out->push_back('\n'); break;
        case 't': out->push_back('\t'); break;
        case 'r': out->push_back('\r'); break;
        case '0': out->push_back('\0'); break;
        case '\\': out->push_back('\\'); break;
        case '\'': out->push_back('\''); break;
        case '"': out->push_back('"'); break;
        case 'u': {
          if (i + 4 > s.size()) return Fail(i - 2, "malformed \\u escape");
          uint32_t cp = 0;
          for (int k = 0; k < 4; ++k) {
            char h = s[i + k];
            if (!std::isxdigit(static_cast<unsigned char>(h))) return Fail(i - 2, "malformed \\u escape");
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                     ? h - '0'
                                                     : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10);
          }
          i += 4;
          AppendUtf8(out, cp);
          break;
        }
        default:
          // Unknown escapes stay as written, so regex patterns like "\d+" work.
          out->push_back('\\');
          out->push_back(e);
      }
    }
    *pos = i;
    return true;
  }

 private:
  bool Fail(size_t pos, std::string msg) { return error_->Set(pos, std::move(msg)); }

  std::string_view text_;
  std::vector<Token>* tokens_;
  SyntaxError* error_;
};

}  // namespace

bool Lex(std::string_view text, std::vector<Token>* tokens, SyntaxError* error) {
  return Lexer(text, tokens, error).Lex();
}

}  // namespace matrix::config::expr_internal
