// Content model of matrix-llm-sim: request parsing, deterministic responses,
// vLLM-shaped rendering. Stateless; see sim_content.h.
#include "daemons/llm_sim/sim_content.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "common/base/hash.h"

namespace matrix::llm_sim {
namespace {

// Purposes of the independent random streams drawn from one request seed.
constexpr uint64_t kLengthStream = 1;
constexpr uint64_t kTextStream = 2;
constexpr uint64_t kAnswerStream = 3;
constexpr uint64_t kToolStream = 4;

constexpr int64_t kAnswerTokens = 6;  // " The" " answer" " is" " (" "X" ")."

const char* const kWords[] = {
    "the",      "a",         "of",        "to",       "and",       "in",        "is",
    "that",     "for",       "it",        "as",       "with",      "on",        "this",
    "be",       "by",        "are",       "from",     "at",        "which",     "we",
    "can",      "one",       "not",       "all",      "there",     "their",     "more",
    "when",     "so",        "these",     "some",     "would",     "other",     "into",
    "its",      "then",      "two",       "first",    "because",   "each",      "only",
    "also",     "than",      "over",      "after",    "most",      "same",      "any",
    "number",   "value",     "result",    "answer",   "question",  "option",    "reason",
    "step",     "point",     "case",      "part",     "form",      "time",      "way",
    "example",  "problem",   "change",    "process",  "system",    "model",     "rate",
    "energy",   "force",     "mass",      "cell",     "market",    "price",     "cost",
    "law",      "rule",      "theory",    "evidence", "claim",     "effect",    "cause",
    "function", "equation",  "variable",  "factor",   "total",     "average",   "balance",
    "increase", "decrease",  "remains",   "follows",  "implies",   "suggests",  "shows",
    "means",    "gives",     "leads",     "depends",  "requires",  "consider",  "compare",
    "check",    "note",      "assume",    "given",    "known",     "likely",    "clear",
    "correct",  "wrong",     "true",      "false",    "simple",    "direct",    "careful",
    "whole",    "small",     "large",     "higher",   "lower",     "equal",     "similar",
    "different", "important", "relevant", "specific", "general",   "common",    "typical",
    "water",    "light",     "heat",      "pressure", "volume",    "speed",     "distance",
    "group",    "species",   "protein",   "gene",     "country",   "history",   "policy",
    "contract", "court",     "patient",   "treatment", "study",    "data",      "sample",
    "therefore", "however",  "thus",      "first",    "next",      "finally",   "instead",
    "here",     "now",       "still",     "again",    "perhaps",   "indeed",    "rather",
    "think",    "look",      "see",       "know",     "find",      "take",      "make",
    "agree",    "argue",     "explain",   "recall",   "apply",     "choose",    "rule",
    "out",      "about",     "between",   "under",    "without",   "within",    "through",
    "while",    "where",     "what",      "how",      "why",       "whether",   "both",
    "either",   "neither",   "very",      "quite",    "much",      "many",      "few",
    "our",      "your",      "his",       "her",      "they",      "you",       "he",
    "she",      "was",       "were",      "has",      "have",      "had",       "will",
    "should",   "could",     "must",      "may",      "might",     "does",      "did",
};
constexpr int64_t kWordCount = sizeof(kWords) / sizeof(kWords[0]);

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string Word(SimRng* rng) { return kWords[rng->Below(kWordCount)]; }

bool IsIntegerJson(const Json& j) { return j.is_number_integer() || j.is_number_unsigned(); }

StatusOr<std::string> ContentText(const Json& content, size_t index) {
  const std::string where = "messages[" + std::to_string(index) + "].content";
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    return InvalidArgument("'" + where + "' must be a string, an array of parts or null");
  std::string out;
  for (const Json& part : content) {
    if (!part.is_object()) return InvalidArgument("'" + where + "' parts must be objects");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string())
      return InvalidArgument("'" + where + "' parts need a string 'type'");
    if (*type != "text") continue;  // images and audio carry no text tokens here
    auto text = part.find("text");
    if (text == part.end() || !text->is_string())
      return InvalidArgument("'" + where + "' text parts need a string 'text'");
    if (!out.empty()) out += "\n";
    out += text->get<std::string>();
  }
  return out;
}

Status OptInt(const Json& body, const char* name, std::optional<int64_t>* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return Status::Ok();
  if (!IsIntegerJson(*it)) return InvalidArgument(std::string("'") + name + "' must be an integer");
  *out = it->is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(
                                        it->get<uint64_t>(), static_cast<uint64_t>(INT64_MAX)))
                                  : it->get<int64_t>();
  return Status::Ok();
}

Status OptBool(const Json& body, const char* name, bool* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) return InvalidArgument(std::string("'") + name + "' must be a boolean");
  *out = it->get<bool>();
  return Status::Ok();
}

Status ParseTools(const Json& body, CompletionRequest* r, size_t* chars) {
  auto tools = body.find("tools");
  if (tools != body.end() && !tools->is_null()) {
    if (!tools->is_array()) return InvalidArgument("'tools' must be an array");
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string where = "tools[" + std::to_string(i) + "]";
      if (!t.is_object()) return InvalidArgument("'" + where + "' must be an object");
      auto type = t.find("type");
      if (type != t.end() && *type != "function")
        return InvalidArgument("'" + where + ".type' must be \"function\"");
      auto fn = t.find("function");
      if (fn == t.end() || !fn->is_object())
        return InvalidArgument("'" + where + ".function' must be an object");
      auto name = fn->find("name");
      if (name == fn->end() || !name->is_string() || name->get<std::string>().empty())
        return InvalidArgument("'" + where + ".function.name' must be a non-empty string");
      ToolSpec spec;
      spec.name = name->get<std::string>();
      auto params = fn->find("parameters");
      if (params != fn->end() && !params->is_null()) {
        if (!params->is_object())
          return InvalidArgument("'" + where + ".function.parameters' must be an object");
        spec.parameters = *params;
      }
      r->tools.push_back(std::move(spec));
    }
    *chars += Dump(*tools).size();
  }
  auto choice = body.find("tool_choice");
  if (choice == body.end() || choice->is_null()) return Status::Ok();
  if (choice->is_string()) {
    const std::string c = choice->get<std::string>();
    if (c == "none") {
      r->tool_choice = ToolChoice::kNone;
    } else if (c == "required") {
      if (r->tools.empty()) return InvalidArgument("'tool_choice' is \"required\" but no tools given");
      r->tool_choice = ToolChoice::kRequired;
    } else if (c != "auto") {
      return InvalidArgument("'tool_choice' must be none, auto, required or a function");
    }
    return Status::Ok();
  }
  if (choice->is_object()) {
    auto fn = choice->find("function");
    if (fn == choice->end() || !fn->is_object() || !fn->contains("name") ||
        !(*fn)["name"].is_string())
      return InvalidArgument("'tool_choice.function.name' must be a string");
    r->forced_tool = (*fn)["name"].get<std::string>();
    bool found = std::any_of(r->tools.begin(), r->tools.end(),
                             [&](const ToolSpec& t) { return t.name == r->forced_tool; });
    if (!found)
      return InvalidArgument("'tool_choice' names function '" + r->forced_tool +
                             "' which is not in 'tools'");
    r->tool_choice = ToolChoice::kRequired;
    return Status::Ok();
  }
  return InvalidArgument("'tool_choice' must be a string or an object");
}

StatusOr<CompletionRequest> ParseFields(ApiKind kind, const Json& j, const SimConfig& config) {
  CompletionRequest r;
  r.kind = kind;
  r.model = config.model_name;
  if (auto m = j.find("model"); m != j.end() && !m->is_null()) {
    if (!m->is_string()) return InvalidArgument("'model' must be a string");
    if (!m->get<std::string>().empty()) r.model = m->get<std::string>();
  }

  size_t chars = 0;
  int64_t token_ids = -1;  // prompt given as token ids
  std::string canonical;
  if (kind == ApiKind::kChat) {
    auto messages = j.find("messages");
    if (messages == j.end() || !messages->is_array() || messages->empty())
      return InvalidArgument("'messages' is required and must be a non-empty array");
    for (size_t i = 0; i < messages->size(); ++i) {
      const Json& m = (*messages)[i];
      if (!m.is_object())
        return InvalidArgument("'messages[" + std::to_string(i) + "]' must be an object");
      auto role = m.find("role");
      if (role == m.end() || !role->is_string())
        return InvalidArgument("'messages[" + std::to_string(i) + "].role' must be a string");
      ChatMessage msg;
      msg.role = role->get<std::string>();
      auto content = m.find("content");
      if (content != m.end()) {
        MATRIX_ASSIGN_OR_RETURN(msg.content, ContentText(*content, i));
      }
      chars += msg.content.size();
      if (auto calls = m.find("tool_calls"); calls != m.end() && calls->is_array())
        chars += Dump(*calls).size();
      r.messages.push_back(std::move(msg));
    }
    canonical = Dump(*messages);
    MATRIX_RETURN_IF_ERROR(ParseTools(j, &r, &chars));
  } else {
    auto prompt = j.find("prompt");
    if (prompt == j.end()) return InvalidArgument("'prompt' is required");
    std::string text;
    auto all_ints = [](const Json& a) {
      return a.is_array() && !a.empty() && std::all_of(a.begin(), a.end(), IsIntegerJson);
    };
    if (prompt->is_string()) {
      text = prompt->get<std::string>();
    } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      text = (*prompt)[0].get<std::string>();
    } else if (all_ints(*prompt)) {
      token_ids = static_cast<int64_t>(prompt->size());
    } else if (prompt->is_array() && prompt->size() == 1 && all_ints((*prompt)[0])) {
      token_ids = static_cast<int64_t>((*prompt)[0].size());
    } else {
      return InvalidArgument(
          "'prompt' must be a string, a list of one string, or a list of token ids");
    }
    chars = text.size();
    r.messages.push_back(ChatMessage{"user", std::move(text)});
    canonical = Dump(*prompt);
  }

  std::optional<int64_t> max_tokens, max_completion_tokens, n, min_tokens, seed;
  MATRIX_RETURN_IF_ERROR(OptInt(j, "max_tokens", &max_tokens));
  MATRIX_RETURN_IF_ERROR(OptInt(j, "max_completion_tokens", &max_completion_tokens));
  MATRIX_RETURN_IF_ERROR(OptInt(j, "n", &n));
  MATRIX_RETURN_IF_ERROR(OptInt(j, "min_tokens", &min_tokens));
  MATRIX_RETURN_IF_ERROR(OptInt(j, "seed", &seed));
  r.max_tokens = max_completion_tokens ? max_completion_tokens : max_tokens;
  if (r.max_tokens && *r.max_tokens < 1) return InvalidArgument("'max_tokens' must be at least 1");
  if (n && *n != 1) return InvalidArgument("only n=1 is supported");
  if (min_tokens) {
    if (*min_tokens < 0) return InvalidArgument("'min_tokens' must be >= 0");
    if (r.max_tokens && *min_tokens > *r.max_tokens)
      return InvalidArgument("'min_tokens' must be <= 'max_tokens'");
    r.min_tokens = *min_tokens;
  }
  if (auto t = j.find("temperature"); t != j.end() && !t->is_null()) {
    if (!t->is_number()) return InvalidArgument("'temperature' must be a number");
    if (t->get<double>() < 0) return InvalidArgument("'temperature' must be >= 0");
    r.temperature = t->get<double>();
  }
  MATRIX_RETURN_IF_ERROR(OptBool(j, "stream", &r.stream));
  MATRIX_RETURN_IF_ERROR(OptBool(j, "ignore_eos", &r.ignore_eos));
  if (auto so = j.find("stream_options"); so != j.end() && !so->is_null()) {
    if (!so->is_object()) return InvalidArgument("'stream_options' must be an object");
    MATRIX_RETURN_IF_ERROR(OptBool(*so, "include_usage", &r.include_usage));
  }

  r.prompt_tokens = token_ids >= 0 ? std::max<int64_t>(1, token_ids) : CountTokens(chars);
  const char* where = kind == ApiKind::kChat ? "messages" : "prompt";
  if (r.max_tokens && r.prompt_tokens + *r.max_tokens > config.max_model_len) {
    return InvalidArgument("This model's maximum context length is " +
                           std::to_string(config.max_model_len) +
                           " tokens. However, you requested " +
                           std::to_string(r.prompt_tokens + *r.max_tokens) + " tokens (" +
                           std::to_string(r.prompt_tokens) + " in the " + where + ", " +
                           std::to_string(*r.max_tokens) +
                           " in the completion). Please reduce the length of the " + where +
                           " or completion.");
  }
  if (r.prompt_tokens >= config.max_model_len) {
    return InvalidArgument("This model's maximum context length is " +
                           std::to_string(config.max_model_len) +
                           " tokens. However, your request has " +
                           std::to_string(r.prompt_tokens) +
                           " input tokens. Please reduce the length of the input " + where + ".");
  }
  r.seed = seed ? Hash64(canonical, static_cast<uint64_t>(*seed)) : Hash64(canonical);
  return r;
}

Json ValueForSchema(const Json& schema, SimRng* rng, int depth) {
  if (depth > 6 || !schema.is_object()) return Word(rng);
  if (auto e = schema.find("enum"); e != schema.end() && e->is_array() && !e->empty())
    return (*e)[static_cast<size_t>(rng->Below(static_cast<int64_t>(e->size())))];
  if (auto c = schema.find("const"); c != schema.end()) return *c;
  std::string type;
  if (auto t = schema.find("type"); t != schema.end()) {
    if (t->is_string()) {
      type = t->get<std::string>();
    } else if (t->is_array()) {
      for (const Json& x : *t)
        if (x.is_string() && x != "null") {
          type = x.get<std::string>();
          break;
        }
    }
  }
  if (type.empty()) {
    if (schema.contains("properties")) type = "object";
    else if (schema.contains("items")) type = "array";
    else if (auto any = schema.find("anyOf"); any != schema.end() && any->is_array() && !any->empty())
      return ValueForSchema((*any)[0], rng, depth + 1);
    else type = "string";
  }
  auto number_or = [&](const char* key, double def) {
    auto it = schema.find(key);
    return it != schema.end() && it->is_number() ? it->get<double>() : def;
  };
  if (type == "object") {
    Json obj = Json::object();
    if (auto props = schema.find("properties"); props != schema.end() && props->is_object())
      for (auto it = props->begin(); it != props->end(); ++it)
        obj[it.key()] = ValueForSchema(it.value(), rng, depth + 1);
    return obj;
  }
  if (type == "array") {
    Json arr = Json::array();
    Json items = schema.contains("items") ? schema["items"] : Json::object();
    int64_t lo = static_cast<int64_t>(number_or("minItems", 1));
    int64_t hi = std::max(lo, static_cast<int64_t>(number_or("maxItems", lo + 1)));
    int64_t count = std::min<int64_t>(rng->Range(lo, std::min(hi, lo + 2)), 16);
    for (int64_t i = 0; i < count; ++i) arr.push_back(ValueForSchema(items, rng, depth + 1));
    return arr;
  }
  if (type == "integer") {
    int64_t lo = static_cast<int64_t>(std::ceil(number_or("minimum", 1)));
    int64_t hi = static_cast<int64_t>(std::floor(number_or("maximum", static_cast<double>(lo + 99))));
    return hi < lo ? lo : rng->Range(lo, hi);
  }
  if (type == "number") {
    double lo = number_or("minimum", 0), hi = number_or("maximum", lo + 100);
    return std::round((lo + rng->Uniform() * std::max(0.0, hi - lo)) * 100.0) / 100.0;
  }
  if (type == "boolean") return rng->Below(2) == 1;
  if (type == "null") return nullptr;
  // string
  std::string format = schema.value("format", std::string());
  char buf[64];
  if (format == "date" || format == "date-time") {
    std::snprintf(buf, sizeof(buf), "2025-%02d-%02d", static_cast<int>(rng->Range(1, 12)),
                  static_cast<int>(rng->Range(1, 28)));
    return format == "date" ? std::string(buf) : std::string(buf) + "T12:00:00Z";
  }
  if (format == "email") return Word(rng) + "@example.com";
  if (format == "uri") return "https://example.com/" + Word(rng);
  std::string s = Word(rng);
  for (int64_t i = rng->Below(3); i > 0; --i) s += " " + Word(rng);
  if (auto max_len = schema.find("maxLength"); max_len != schema.end() && IsIntegerJson(*max_len))
    if (s.size() > max_len->get<size_t>()) s.resize(max_len->get<size_t>());
  return s;
}

// Splits `text` into pieces of about 4 bytes without cutting a UTF-8 sequence.
std::vector<std::string> SplitPieces(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + 4);
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

char ChooseAnswer(const CompletionRequest& r, const SimConfig& config) {
  SimRng rng(SubSeed(r.seed, kAnswerStream));
  const char last = LastOptionLetter(r.messages);
  const int64_t options = last - 'A' + 1;
  const double u = rng.Uniform();
  std::optional<char> prev = FindPreviousAnswer(r.messages, last);
  if (!prev) return static_cast<char>('A' + rng.Below(options));
  const bool greedy = r.temperature && *r.temperature == 0.0;
  if (greedy || u < config.agree_prob || options <= 1) return *prev;
  char other = static_cast<char>('A' + rng.Below(options - 1));
  if (other >= *prev) ++other;
  return other;
}

Json UsageJson(const CompletionRequest& r, const CompletionPlan& plan) {
  Json usage;
  usage["prompt_tokens"] = r.prompt_tokens;
  usage["completion_tokens"] = plan.completion_tokens();
  usage["total_tokens"] = r.prompt_tokens + plan.completion_tokens();
  return usage;
}

}  // namespace

std::string_view CompletionPlan::Pieces(int64_t from, int64_t to) const {
  const int64_t n = completion_tokens();
  from = std::clamp<int64_t>(from, 0, n);
  to = std::clamp<int64_t>(to, from, n);
  if (from == to) return {};
  const size_t begin = from == 0 ? 0 : ends[static_cast<size_t>(from - 1)];
  const size_t end = ends[static_cast<size_t>(to - 1)];
  return std::string_view(text).substr(begin, end - begin);
}

void CompletionPlan::AddPiece(std::string_view piece) {
  text.append(piece.data(), piece.size());
  ends.push_back(static_cast<uint32_t>(text.size()));
}

int64_t CountTokens(size_t chars) {
  return std::max<int64_t>(1, static_cast<int64_t>((chars + 3) / 4));
}

StatusOr<CompletionRequest> ParseCompletionRequest(ApiKind kind, std::string_view body,
                                                   const SimConfig& config) {
  Json j;
  try {
    j = Json::parse(body.begin(), body.end());
  } catch (const Json::exception& e) {
    return InvalidArgument(std::string("request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) return InvalidArgument("request body must be a JSON object");
  try {
    return ParseFields(kind, j, config);
  } catch (const Json::exception& e) {
    return InvalidArgument(std::string("invalid request: ") + e.what());
  }
}

int64_t SampleOutputTokens(SimRng* rng, double mean, double alpha) {
  const double u = 1.0 - rng->Uniform();  // (0, 1]
  const double lambda = std::max(mean - 0.5, 0.5) * (alpha - 1.0);
  double x = lambda * (std::pow(u, -1.0 / alpha) - 1.0);
  if (!(x < 1e9)) x = 1e9;
  return 1 + static_cast<int64_t>(std::floor(x));
}

char LastOptionLetter(const std::vector<ChatMessage>& messages) {
  uint32_t seen = 0;
  for (const ChatMessage& m : messages) {
    const std::string& s = m.content;
    size_t line = 0;
    while (line < s.size()) {
      size_t end = s.find('\n', line);
      if (end == std::string::npos) end = s.size();
      size_t p = line;
      while (p < end && (s[p] == ' ' || s[p] == '\t')) ++p;
      char letter = 0;
      size_t after = 0;
      if (p + 2 < end && s[p] == '(' && std::isupper(static_cast<unsigned char>(s[p + 1])) &&
          s[p + 2] == ')') {
        letter = s[p + 1];
        after = p + 3;
      } else if (p + 1 < end && std::isupper(static_cast<unsigned char>(s[p])) &&
                 (s[p + 1] == '.' || s[p + 1] == ')' || s[p + 1] == ':')) {
        letter = s[p];
        after = p + 2;
      }
      if (letter && (after >= end || s[after] == ' ' || s[after] == '\t' || s[after] == '\r'))
        seen |= 1u << (letter - 'A');
      line = end + 1;
    }
  }
  int run = 0;
  while (run < 26 && (seen & (1u << run))) ++run;
  return run >= 2 ? static_cast<char>('A' + run - 1) : 'J';
}

std::optional<char> FindPreviousAnswer(const std::vector<ChatMessage>& messages, char last_letter) {
  static const std::string kKey = "answer is";
  for (auto m = messages.rbegin(); m != messages.rend(); ++m) {
    const std::string& s = m->content;
    std::string lower(s.size(), ' ');
    std::transform(s.begin(), s.end(), lower.begin(),
                   [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); });
    size_t pos = lower.rfind(kKey);
    while (pos != std::string::npos) {
      size_t p = pos + kKey.size();
      while (p < s.size() && (s[p] == ' ' || s[p] == ':' || s[p] == '*')) ++p;
      bool paren = p < s.size() && s[p] == '(';
      if (paren) ++p;
      if (p < s.size() && s[p] >= 'A' && s[p] <= last_letter) {
        char letter = s[p];
        size_t q = p + 1;
        bool ok = paren ? (q < s.size() && s[q] == ')')
                        : (q >= s.size() || !std::isalnum(static_cast<unsigned char>(s[q])));
        if (ok) return letter;
      }
      if (pos == 0) break;
      pos = lower.rfind(kKey, pos - 1);
    }
  }
  return std::nullopt;
}

void AppendFiller(SimRng* rng, int64_t count, CompletionPlan* plan) {
  plan->text.reserve(plan->text.size() + static_cast<size_t>(std::max<int64_t>(0, count)) * 7);
  plan->ends.reserve(plan->ends.size() + static_cast<size_t>(std::max<int64_t>(0, count)));
  int64_t left = 0;
  std::string piece;
  for (int64_t i = 0; i < count; ++i) {
    const bool start = left == 0;
    if (start) left = rng->Range(6, 16);
    piece.clear();
    if (!plan->text.empty()) piece += ' ';
    const size_t word_at = piece.size();
    piece += kWords[rng->Below(kWordCount)];
    if (start) piece[word_at] = static_cast<char>(std::toupper(static_cast<unsigned char>(piece[word_at])));
    --left;
    if (left == 0 || i == count - 1) {
      piece += '.';
      left = 0;
    } else if (!start && rng->Uniform() < 0.06) {
      piece += ',';
    }
    plan->AddPiece(piece);
  }
}

CompletionPlan PlanCompletion(const CompletionRequest& r, const SimConfig& config) {
  CompletionPlan plan;
  const int64_t limit = std::max<int64_t>(1, config.max_model_len - r.prompt_tokens);
  const bool last_is_tool = !r.messages.empty() && r.messages.back().role == "tool";

  if (r.kind == ApiKind::kChat && !r.tools.empty() && r.tool_choice != ToolChoice::kNone &&
      !last_is_tool) {
    SimRng rng(SubSeed(r.seed, kToolStream));
    const bool call =
        r.tool_choice == ToolChoice::kRequired || rng.Uniform() < config.tool_call_prob;
    if (call) {
      const ToolSpec* tool = &r.tools[static_cast<size_t>(rng.Below(static_cast<int64_t>(r.tools.size())))];
      if (!r.forced_tool.empty())
        for (const ToolSpec& t : r.tools)
          if (t.name == r.forced_tool) tool = &t;
      Json args = ValueForSchema(tool->parameters.is_null() ? Json::object() : tool->parameters,
                                 &rng, 0);
      if (!args.is_object()) args = Json::object();
      const std::string arguments = Dump(args);
      std::vector<std::string> fragments = SplitPieces(arguments);
      const int64_t needed = 1 + static_cast<int64_t>(fragments.size());
      if ((!r.max_tokens || needed <= *r.max_tokens) && needed <= limit) {
        plan.tool_call = true;
        plan.tool_name = tool->name;
        plan.tool_call_id = "call_" + Hex64(rng.Next()) + Hex64(rng.Next()).substr(0, 8);
        plan.AddPiece("");
        for (const std::string& f : fragments) plan.AddPiece(f);
        plan.finish_reason = "tool_calls";
        return plan;
      }
    }
  }

  SimRng length_rng(SubSeed(r.seed, kLengthStream));
  int64_t length = SampleOutputTokens(&length_rng, config.mean_output_tokens, config.tail_alpha);
  const bool mc = config.answer_mode == "mc";
  if (mc) length = std::max(length, kAnswerTokens);
  length = std::max(length, r.min_tokens);
  std::string finish = "stop";
  if (r.ignore_eos) {
    length = r.max_tokens ? *r.max_tokens : limit;
    finish = "length";
  } else if (r.max_tokens && length > *r.max_tokens) {
    length = *r.max_tokens;
    finish = "length";
  }
  if (length > limit) {
    length = limit;
    finish = "length";
  }
  length = std::max<int64_t>(1, length);
  plan.finish_reason = finish;

  SimRng text_rng(SubSeed(r.seed, kTextStream));
  if (!mc) {
    AppendFiller(&text_rng, length, &plan);
    return plan;
  }
  plan.answer = ChooseAnswer(r, config);
  AppendFiller(&text_rng, length - kAnswerTokens, &plan);
  const std::string letter(1, plan.answer);
  const std::string_view answer[kAnswerTokens] = {" The", " answer", " is", " (", letter, ")."};
  for (int64_t i = 0; i < kAnswerTokens && plan.completion_tokens() < length; ++i)
    plan.AddPiece(plan.text.empty() ? answer[i].substr(1) : answer[i]);
  return plan;
}

std::string ResponseIdPrefix(ApiKind kind) { return kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-"; }

std::string RenderCompletion(const CompletionRequest& r, const CompletionPlan& plan,
                             const ResponseMeta& meta) {
  Json choice;
  choice["index"] = 0;
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = plan.finish_reason;
  choice["stop_reason"] = nullptr;
  if (r.kind == ApiKind::kChat) {
    Json message;
    message["role"] = "assistant";
    if (plan.tool_call) {
      message["content"] = nullptr;
      Json call;
      call["id"] = plan.tool_call_id;
      call["type"] = "function";
      call["function"] = {{"name", plan.tool_name}, {"arguments", plan.text}};
      message["tool_calls"] = Json::array({call});
    } else {
      message["content"] = plan.Text();
      message["tool_calls"] = Json::array();
    }
    choice["message"] = std::move(message);
  } else {
    choice["text"] = plan.Text();
  }
  Json body;
  body["id"] = meta.id;
  body["object"] = r.kind == ApiKind::kChat ? "chat.completion" : "text_completion";
  body["created"] = meta.created;
  body["model"] = r.model;
  body["choices"] = Json::array({std::move(choice)});
  body["usage"] = UsageJson(r, plan);
  return Dump(body);
}

StreamRenderer::StreamRenderer(const CompletionRequest* request, const CompletionPlan* plan,
                               ResponseMeta meta)
    : request_(request), plan_(plan), meta_(std::move(meta)) {
  head_ = "data: {\"id\":" + Dump(meta_.id) + ",\"object\":" +
          (request_->kind == ApiKind::kChat ? "\"chat.completion.chunk\"" : "\"text_completion\"") +
          ",\"created\":" + std::to_string(meta_.created) + ",\"model\":" + Dump(request_->model) +
          ",\"choices\":[{\"index\":0,";
}

std::string StreamRenderer::Tokens(int64_t from, int64_t to) {
  std::string out;
  const bool chat = request_->kind == ApiKind::kChat;
  if (chat && !role_sent_) {
    out += head_ + "\"delta\":{\"role\":\"assistant\",\"content\":" +
           (plan_->tool_call ? "null" : "\"\"") + "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    role_sent_ = true;
  }
  if (from >= to) return out;
  if (plan_->tool_call) {
    Json call;
    call["index"] = 0;
    if (from == 0) {
      call["id"] = plan_->tool_call_id;
      call["type"] = "function";
      call["function"] = {{"name", plan_->tool_name},
                          {"arguments", std::string(plan_->Pieces(1, to))}};
    } else {
      call["function"] = {{"arguments", std::string(plan_->Pieces(from, to))}};
    }
    Json delta;
    delta["tool_calls"] = Json::array({std::move(call)});
    out += head_ + "\"delta\":" + Dump(delta) + ",\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    return out;
  }
  const std::string text = Dump(Json(std::string(plan_->Pieces(from, to))));
  if (chat) {
    out += head_ + "\"delta\":{\"content\":" + text + "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
  } else {
    out += head_ + "\"text\":" + text + ",\"logprobs\":null,\"finish_reason\":null}]}\n\n";
  }
  return out;
}

std::string StreamRenderer::Finish() {
  std::string out = Tokens(0, 0);
  const std::string finish = Dump(Json(plan_->finish_reason));
  if (request_->kind == ApiKind::kChat) {
    out += head_ + "\"delta\":{},\"logprobs\":null,\"finish_reason\":" + finish +
           ",\"stop_reason\":null}]}\n\n";
  } else {
    out += head_ + "\"text\":\"\",\"logprobs\":null,\"finish_reason\":" + finish +
           ",\"stop_reason\":null}]}\n\n";
  }
  if (request_->include_usage) {
    Json usage_chunk;
    usage_chunk["id"] = meta_.id;
    usage_chunk["object"] =
        request_->kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion";
    usage_chunk["created"] = meta_.created;
    usage_chunk["model"] = request_->model;
    usage_chunk["choices"] = Json::array();
    usage_chunk["usage"] = UsageJson(*request_, *plan_);
    out += "data: " + Dump(usage_chunk) + "\n\n";
  }
  out += "data: [DONE]\n\n";
  return out;
}

std::string RenderMalformed(const CompletionRequest& r, const CompletionPlan& plan,
                            const ResponseMeta& meta, int variant) {
  Json partial;
  partial["id"] = meta.id;
  partial["object"] = r.kind == ApiKind::kChat
                          ? (r.stream ? "chat.completion.chunk" : "chat.completion")
                          : "text_completion";
  partial["created"] = meta.created;
  partial["model"] = r.model;
  if (!r.stream) {
    if (variant == 0) {
      std::string full = RenderCompletion(r, plan, meta);
      return full.substr(0, full.size() / 2);
    }
    partial["usage"] = UsageJson(r, plan);
    return Dump(partial);
  }
  if (variant == 0) {
    StreamRenderer renderer(&r, &plan, meta);
    std::string events = renderer.Tokens(0, plan.completion_tokens());
    size_t last = events.rfind("data: ");
    std::string event = events.substr(last, (events.size() - last) / 2);
    return event + "\n\ndata: [DONE]\n\n";
  }
  return "data: " + Dump(partial) + "\n\ndata: [DONE]\n\n";
}

std::string RenderError(int code, const std::string& type, const std::string& message) {
  Json error;
  error["message"] = message;
  error["type"] = type;
  error["param"] = nullptr;
  error["code"] = code;
  Json body;
  body["error"] = std::move(error);
  return Dump(body);
}

std::string RenderModels(const SimConfig& config, int64_t created) {
  Json model;
  model["id"] = config.model_name;
  model["object"] = "model";
  model["created"] = created;
  model["owned_by"] = "matrix-llm-sim";
  model["root"] = config.model_name;
  model["parent"] = nullptr;
  model["max_model_len"] = config.max_model_len;
  Json body;
  body["object"] = "list";
  body["data"] = Json::array({std::move(model)});
  return Dump(body);
}

}  // namespace matrix::llm_sim
