// Content model of matrix-llm-sim: request parsing, deterministic responses,
// vLLM-shaped rendering. Stateless; see sim_content.h.
#include "daemons/llm_sim/sim_content.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <set>

#include "common/base/hash.h"
#include "common/base/json_schema.h"
#include "daemons/llm_sim/sim_tools.h"

namespace matrix::llm_sim {
namespace {

// Purposes of the independent random streams drawn from one request seed.
constexpr uint64_t kLengthStream = 1;
constexpr uint64_t kTextStream = 2;
constexpr uint64_t kAnswerStream = 3;
constexpr uint64_t kToolStream = 4;
constexpr uint64_t kUserStream = 5;
constexpr uint64_t kStructuredStream = 6;
constexpr uint64_t kInvalidJsonStream = 7;
constexpr uint64_t kLogprobStream = 8;
constexpr uint64_t kPromptIdStream = 9;

// " ###STOP###" as completion tokens.
const std::string_view kStopPieces[] = {" ###", "STOP", "###"};
constexpr int64_t kStopTokens = 3;

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

Status ParseResponseFormat(const Json& body, CompletionRequest* r) {
  auto rf = body.find("response_format");
  if (rf == body.end() || rf->is_null()) return Status::Ok();
  if (!rf->is_object()) return InvalidArgument("'response_format' must be an object");
  auto type = rf->find("type");
  if (type == rf->end() || !type->is_string())
    return InvalidArgument("'response_format.type' must be a string");
  const std::string t = type->get<std::string>();
  if (t == "text") return Status::Ok();
  if (t == "json_object") {
    r->response_format = ResponseFormat::kJsonObject;
    return Status::Ok();
  }
  if (t != "json_schema")
    return InvalidArgument("'response_format.type' must be text, json_object or json_schema, got '" + t +
                           "'");
  auto js = rf->find("json_schema");
  if (js == rf->end() || !js->is_object())
    return InvalidArgument("'response_format.json_schema' must be an object");
  auto name = js->find("name");
  if (name == js->end() || !name->is_string())
    return InvalidArgument("'response_format.json_schema.name' must be a string");
  Json schema = Json::object();
  if (auto it = js->find("schema"); it != js->end() && !it->is_null()) {
    if (!it->is_object()) return InvalidArgument("'response_format.json_schema.schema' must be an object");
    schema = *it;
  }
  // A schema the server cannot compile is refused, as vLLM's guided decoding does.
  StatusOr<JsonSchema> compiled = JsonSchema::Compile(schema);
  if (!compiled.ok())
    return InvalidArgument("'response_format.json_schema.schema': " + compiled.status().message());
  r->response_format = ResponseFormat::kJsonSchema;
  r->response_schema = std::move(schema);
  return Status::Ok();
}

// Chat: "logprobs" true/false and "top_logprobs" N. Text completions: the
// legacy "logprobs" N (N alternatives), or true with "top_logprobs".
Status ParseLogprobs(ApiKind kind, const Json& body, CompletionRequest* r) {
  const std::string range = "[0, " + std::to_string(kMaxTopLogprobs) + "]";
  bool legacy_count = false;
  if (auto lp = body.find("logprobs"); lp != body.end() && !lp->is_null()) {
    if (lp->is_boolean()) {
      r->logprobs = lp->get<bool>();
    } else if (kind == ApiKind::kText && IsIntegerJson(*lp)) {
      std::optional<int64_t> n;
      MATRIX_RETURN_IF_ERROR(OptInt(body, "logprobs", &n));
      if (*n < 0 || *n > kMaxTopLogprobs)
        return InvalidArgument("'logprobs' must be in " + range + ", got " + std::to_string(*n));
      r->logprobs = true;
      r->top_logprobs = *n;
      legacy_count = true;
    } else {
      return InvalidArgument(kind == ApiKind::kChat ? "'logprobs' must be a boolean"
                                                    : "'logprobs' must be an integer or a boolean");
    }
  }
  std::optional<int64_t> top;
  MATRIX_RETURN_IF_ERROR(OptInt(body, "top_logprobs", &top));
  if (top) {
    if (*top < 0 || *top > kMaxTopLogprobs)
      return InvalidArgument("'top_logprobs' must be in " + range + ", got " + std::to_string(*top));
    if (*top > 0 && !r->logprobs)
      return InvalidArgument("'top_logprobs' needs 'logprobs' to be true");
    if (!legacy_count) r->top_logprobs = *top;
  }
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
    *chars += DumpJson(*tools).size();
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
  const Json* id_prompt = nullptr;  // the list of ids then
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
      if (auto calls = m.find("tool_calls"); calls != m.end() && calls->is_array()) {
        chars += DumpJson(*calls).size();
        for (const Json& call : *calls)
          if (call.is_object())
            if (auto id = call.find("id"); id != call.end() && id->is_string())
              r.prior_tool_call_ids.push_back(id->get<std::string>());
      }
      if (auto id = m.find("tool_call_id"); id != m.end() && id->is_string())
        r.prior_tool_call_ids.push_back(id->get<std::string>());
      r.messages.push_back(std::move(msg));
    }
    canonical = DumpJson(*messages);
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
      id_prompt = &*prompt;
    } else if (prompt->is_array() && prompt->size() == 1 && all_ints((*prompt)[0])) {
      token_ids = static_cast<int64_t>((*prompt)[0].size());
      id_prompt = &(*prompt)[0];
    } else {
      return InvalidArgument(
          "'prompt' must be a string, a list of one string, or a list of token ids");
    }
    chars = text.size();
    r.messages.push_back(ChatMessage{"user", std::move(text)});
    canonical = DumpJson(*prompt);
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
  MATRIX_RETURN_IF_ERROR(OptBool(j, "parallel_tool_calls", &r.parallel_tool_calls));
  if (auto so = j.find("stream_options"); so != j.end() && !so->is_null()) {
    if (!so->is_object()) return InvalidArgument("'stream_options' must be an object");
    MATRIX_RETURN_IF_ERROR(OptBool(*so, "include_usage", &r.include_usage));
  }
  MATRIX_RETURN_IF_ERROR(ParseResponseFormat(j, &r));
  MATRIX_RETURN_IF_ERROR(ParseLogprobs(kind, j, &r));
  MATRIX_RETURN_IF_ERROR(OptBool(j, "return_token_ids", &r.return_token_ids));
  if (r.return_token_ids && id_prompt != nullptr)
    for (const Json& id : *id_prompt)
      r.prompt_ids.push_back(id.is_number_unsigned() ? static_cast<int64_t>(id.get<uint64_t>())
                                                     : id.get<int64_t>());

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
  r.seed = seed && !config.ignore_seed ? Hash64(canonical, static_cast<uint64_t>(*seed)) : Hash64(canonical);
  return r;
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

namespace {

// Plans the tool calls of a reply, when the request offers tools and the
// reply is to be a call; false (and `plan` untouched) for a text reply.
bool PlanToolCalls(const CompletionRequest& r, const SimConfig& config, int64_t limit,
                   CompletionPlan* plan) {
  if (r.kind != ApiKind::kChat || r.tools.empty() || r.tool_choice == ToolChoice::kNone) return false;
  const bool last_is_tool = !r.messages.empty() && r.messages.back().role == "tool";
  SimRng rng(SubSeed(r.seed, kToolStream));
  const double u = rng.Uniform();
  bool call = false;
  if (r.tool_choice == ToolChoice::kRequired) {
    call = true;
  } else if (last_is_tool) {
    call = u >= config.text_after_tool_prob;
  } else {
    call = u < config.tool_call_prob;
  }
  if (!call) return false;
  int64_t count = 1;
  if (rng.Uniform() < config.parallel_tool_prob && r.parallel_tool_calls && r.forced_tool.empty())
    count = rng.Range(2, 3);

  FoundIds ids;
  for (const ChatMessage& m : r.messages)
    if (m.role == "user" || m.role == "tool") ScanIds(m.content, &ids);
  std::set<std::string> used(r.prior_tool_call_ids.begin(), r.prior_tool_call_ids.end());
  const int64_t cap = r.max_tokens ? std::min(*r.max_tokens, limit) : limit;
  std::set<std::string> planned_calls;  // name + arguments: parallel calls never repeat one
  for (int64_t attempt = 0; static_cast<int64_t>(plan->calls.size()) < count && attempt < count + 3;
       ++attempt) {
    const ToolSpec* tool =
        &r.tools[static_cast<size_t>(rng.Below(static_cast<int64_t>(r.tools.size())))];
    if (!r.forced_tool.empty())
      for (const ToolSpec& t : r.tools)
        if (t.name == r.forced_tool) tool = &t;
    const std::string arguments = DumpJson(ArgumentsForSchema(tool->parameters, ids, &rng));
    if (!planned_calls.insert(tool->name + "\n" + arguments).second) continue;
    const std::vector<std::string> fragments = SplitPieces(arguments);
    const int64_t needed = 1 + static_cast<int64_t>(fragments.size());
    if (plan->completion_tokens() + needed > cap) break;
    PlannedToolCall planned;
    do {
      planned.id = "call_" + Hex64(rng.Next()) + Hex64(rng.Next()).substr(0, 8);
    } while (!used.insert(planned.id).second);
    planned.name = tool->name;
    planned.first = plan->completion_tokens();
    plan->AddPiece("");
    for (const std::string& f : fragments) plan->AddPiece(f);
    planned.end = plan->completion_tokens();
    plan->calls.push_back(std::move(planned));
  }
  if (plan->calls.empty()) return false;
  plan->tool_call = true;
  plan->finish_reason = "tool_calls";
  return true;
}

// Keys of json_object replies.
const char* const kJsonKeys[] = {"answer",   "reason", "summary", "title",  "label",
                                 "category", "score",  "count",   "valid",  "confidence",
                                 "notes",    "rating", "topic",   "status", "complete"};

std::string FillerPhrase(SimRng* rng, int64_t words) {
  std::string out;
  for (int64_t i = 0; i < words; ++i) {
    if (!out.empty()) out += ' ';
    out += kWords[rng->Below(kWordCount)];
  }
  return out;
}

// A json_object reply: two to five keys with short phrases, numbers and booleans.
Json JsonObjectReply(SimRng* rng) {
  Json obj = Json::object();
  const size_t keys = static_cast<size_t>(rng->Range(2, 5));
  while (obj.size() < keys) {
    const std::string key = kJsonKeys[rng->Below(sizeof(kJsonKeys) / sizeof(kJsonKeys[0]))];
    if (obj.contains(key)) continue;
    switch (rng->Below(4)) {
      case 0:
      case 1:
        obj[key] = FillerPhrase(rng, rng->Range(1, 4));
        break;
      case 2:
        obj[key] = rng->Below(2) == 0 ? Json(rng->Range(0, 100))
                                      : Json(std::round(rng->Uniform() * 10000.0) / 100.0);
        break;
      default:
        obj[key] = rng->Below(2) == 1;
    }
  }
  return obj;
}

// Free text in a structured reply grows to the reply's sampled length, as a
// model's would: strings the schema leaves open (no enum, const, format,
// pattern or maxLength), in objects and arrays, get `words` more filler words
// shared among them. Others stay as ValueForSchema made them.
void GrowFreeText(Json* value, const Json& schema, int64_t words, SimRng* rng) {
  std::vector<std::string*> open;
  std::function<void(Json*, const Json&, int)> walk = [&](Json* v, const Json& sc, int depth) {
    if (depth > 8 || !sc.is_object()) return;
    if (v->is_string()) {
      for (const char* k : {"enum", "const", "format", "pattern", "maxLength", "$ref", "anyOf", "oneOf", "allOf"})
        if (sc.contains(k)) return;
      open.push_back(v->get_ptr<std::string*>());
    } else if (v->is_object() && sc.contains("properties") && sc["properties"].is_object()) {
      for (auto& [k, child] : v->items())
        if (sc["properties"].contains(k)) walk(&child, sc["properties"][k], depth + 1);
    } else if (v->is_array() && sc.contains("items") && sc["items"].is_object()) {
      for (auto& child : *v) walk(&child, sc["items"], depth + 1);
    }
  };
  walk(value, schema, 0);
  if (open.empty()) return;
  for (int64_t i = 0; i < words; ++i) {
    std::string* s = open[static_cast<size_t>(rng->Below(static_cast<int64_t>(open.size())))];
    if (!s->empty()) s->push_back(' ');
    s->append(kWords[rng->Below(kWordCount)]);
  }
}

// Plans a response_format json_object / json_schema reply: the JSON split
// into pieces like tool-call arguments, cut by max_tokens, and broken on
// purpose with probability invalid_json_prob.
void PlanStructured(const CompletionRequest& r, const SimConfig& config, int64_t limit,
                    CompletionPlan* plan) {
  SimRng rng(SubSeed(r.seed, kStructuredStream));
  Json value;
  if (r.response_format == ResponseFormat::kJsonSchema) {
    FoundIds ids;
    for (const ChatMessage& m : r.messages)
      if (m.role == "user" || m.role == "tool") ScanIds(m.content, &ids);
    value = ValueForSchema(r.response_schema, ids, &rng,
                           FillerWords{kWords, static_cast<size_t>(kWordCount)});
    // The reply's length follows the configured (long-tailed) distribution
    // where the schema leaves room for text; about 1.5 tokens per word.
    SimRng length_rng(SubSeed(r.seed, kLengthStream));
    const int64_t wanted = SampleOutputTokens(&length_rng, config.mean_output_tokens, config.tail_alpha);
    const int64_t have = CountTokens(DumpJson(value).size());
    if (wanted > have) GrowFreeText(&value, r.response_schema, (wanted - have) * 2 / 3, &rng);
  } else {
    value = JsonObjectReply(&rng);
  }
  std::string text = DumpJson(value);
  SimRng break_rng(SubSeed(r.seed, kInvalidJsonStream));
  if (break_rng.Uniform() < config.invalid_json_prob) {
    plan->broken = true;
    // Either a required property goes missing (JSON that fails the schema) or
    // the text stops early (not JSON at all).
    std::vector<std::string> present;
    if (auto req = r.response_schema.find("required");
        value.is_object() && req != r.response_schema.end() && req->is_array())
      for (const Json& k : *req)
        if (k.is_string() && value.contains(k.get<std::string>())) present.push_back(k.get<std::string>());
    if (!present.empty() && break_rng.Below(2) == 0) {
      value.erase(present[static_cast<size_t>(break_rng.Below(static_cast<int64_t>(present.size())))]);
      text = DumpJson(value);
    } else if (value.is_structured() || value.is_string()) {
      // No proper prefix of an object, array or string is JSON.
      size_t cut = std::max<size_t>(1, text.size() * static_cast<size_t>(break_rng.Range(25, 75)) / 100);
      while (cut > 1 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
      text.resize(cut);
    } else {
      text = "[" + text;  // a bare number, boolean or null: an unclosed array
    }
  }
  const std::vector<std::string> pieces = SplitPieces(text);
  const int64_t cap = r.max_tokens ? std::min(*r.max_tokens, limit) : limit;
  plan->finish_reason = "stop";
  for (const std::string& piece : pieces) {
    if (plan->completion_tokens() >= cap) {
      plan->finish_reason = "length";
      break;
    }
    plan->AddPiece(piece);
  }
  // A decoder that may not stop yet (min_tokens, ignore_eos) adds whitespace,
  // which keeps the JSON valid.
  int64_t target = std::min(cap, r.min_tokens);
  if (r.ignore_eos) {
    target = cap;
    plan->finish_reason = "length";
  }
  while (plan->completion_tokens() < target) plan->AddPiece(" ");
  plan->structured = true;
}

}  // namespace

bool PlaysUser(const CompletionRequest& r) {
  if (r.kind != ApiKind::kChat || !r.tools.empty()) return false;
  return std::any_of(r.messages.begin(), r.messages.end(), [](const ChatMessage& m) {
    return (m.role == "system" || m.role == "developer") &&
           m.content.find(kUserStopToken) != std::string::npos;
  });
}

CompletionPlan PlanCompletion(const CompletionRequest& r, const SimConfig& config) {
  CompletionPlan plan;
  const int64_t limit = std::max<int64_t>(1, config.max_model_len - r.prompt_tokens);
  if (PlanToolCalls(r, config, limit, &plan)) return plan;
  if (r.response_format != ResponseFormat::kText) {
    PlanStructured(r, config, limit, &plan);
    return plan;
  }

  SimRng length_rng(SubSeed(r.seed, kLengthStream));
  int64_t length = SampleOutputTokens(&length_rng, config.mean_output_tokens, config.tail_alpha);
  const bool user = PlaysUser(r);
  const bool mc = config.answer_mode == "mc" && !user;
  std::vector<std::string> mention;
  bool stop = false;
  if (user) {
    SimRng user_rng(SubSeed(r.seed, kUserStream));
    const int64_t turns = std::count_if(r.messages.begin(), r.messages.end(),
                                        [](const ChatMessage& m) { return m.role == "assistant"; });
    const double u = user_rng.Uniform();
    stop = turns >= config.user_max_turns || (turns >= 1 && u < config.user_stop_prob);
    FoundIds scenario;
    for (const ChatMessage& m : r.messages)
      if (m.role == "system" || m.role == "developer") ScanIds(m.content, &scenario);
    mention = ScenarioMention(scenario, turns == 0, &user_rng);
    length = std::max(length, static_cast<int64_t>(mention.size()) + (stop ? kStopTokens : 0));
  }
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
  if (user) {
    // The scenario's identifiers, filler, then the stop marker when the user is done.
    const int64_t stop_n = stop ? std::min(kStopTokens, length) : 0;
    const int64_t mention_n = std::min(static_cast<int64_t>(mention.size()), length - stop_n);
    for (int64_t i = 0; i < mention_n; ++i)
      plan.AddPiece((plan.text.empty() ? "" : " ") + mention[static_cast<size_t>(i)]);
    AppendFiller(&text_rng, length - stop_n - mention_n, &plan);
    for (int64_t i = 0; i < stop_n; ++i)
      plan.AddPiece(plan.text.empty() ? kStopPieces[i].substr(1) : kStopPieces[i]);
    return plan;
  }
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

int64_t TokenId(std::string_view piece) {
  return static_cast<int64_t>(Hash64(piece) % static_cast<uint64_t>(kVocabularySize));
}

TokenLogprob LogprobFor(uint64_t seed, int64_t index, std::string_view token, int64_t top) {
  SimRng rng(SubSeed(SubSeed(seed, kLogprobStream) ^ Hash64(token), static_cast<uint64_t>(index) + 1));
  // Probabilities of the most likely tokens, descending, summing to less than
  // 1: the first takes 35-99 % of the mass, each next one part of what is left.
  const int64_t n = std::max<int64_t>(top, 3);
  std::vector<double> p(static_cast<size_t>(n));
  p[0] = 0.35 + 0.64 * rng.Uniform();
  double left = 1.0 - p[0];
  for (size_t j = 1; j < p.size(); ++j) {
    p[j] = std::min(p[j - 1], left * (0.1 + 0.5 * rng.Uniform()));
    left -= p[j];
  }
  // The sampled token is usually the most likely one.
  const double u = rng.Uniform();
  const size_t rank = u < 0.8 ? 0 : u < 0.95 ? 1 : 2;
  auto logprob_of = [](double x) { return std::round(std::log(x) * 1e6) / 1e6; };
  TokenLogprob out;
  out.token = std::string(token);
  out.logprob = logprob_of(p[rank]);
  const bool spaced = !token.empty() && token.front() == ' ';
  std::set<std::string> used = {out.token};
  for (size_t j = 0; j < static_cast<size_t>(top); ++j) {
    if (j == rank) {
      out.top.emplace_back(out.token, out.logprob);
      continue;
    }
    std::string alt;
    for (int tries = 0; tries < 64 && (alt.empty() || used.count(alt)); ++tries)
      alt = (spaced ? " " : "") + std::string(kWords[rng.Below(kWordCount)]);
    while (used.count(alt)) alt += "s";
    used.insert(alt);
    out.top.emplace_back(std::move(alt), logprob_of(p[j]));
  }
  return out;
}

namespace {

// The text of completion token i as logprobs and token ids report it: the
// piece, or for a tool call's header (an empty piece) the function name.
std::string TokenText(const CompletionPlan& plan, int64_t i) {
  for (const PlannedToolCall& c : plan.calls)
    if (c.first == i) return c.name;
  return std::string(plan.Pieces(i, i + 1));
}

Json Utf8Bytes(const std::string& s) {
  Json out = Json::array();
  for (unsigned char c : s) out.push_back(static_cast<int>(c));
  return out;
}

// choices[].logprobs for completion tokens [from, to): {"content": [...]} for
// chat, the legacy {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
// for text completions; null when the request did not ask.
Json LogprobsJson(const CompletionRequest& r, const CompletionPlan& plan, int64_t from, int64_t to) {
  if (!r.logprobs) return nullptr;
  to = std::min(to, plan.completion_tokens());
  if (r.kind == ApiKind::kChat) {
    Json content = Json::array();
    for (int64_t i = from; i < to; ++i) {
      const TokenLogprob t = LogprobFor(r.seed, i, TokenText(plan, i), r.top_logprobs);
      Json top = Json::array();
      for (const auto& [token, logprob] : t.top)
        top.push_back({{"token", token}, {"logprob", logprob}, {"bytes", Utf8Bytes(token)}});
      content.push_back({{"token", t.token},
                         {"logprob", t.logprob},
                         {"bytes", Utf8Bytes(t.token)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  Json tokens = Json::array(), token_logprobs = Json::array(), top = Json::array(),
       offsets = Json::array();
  for (int64_t i = from; i < to; ++i) {
    const TokenLogprob t = LogprobFor(r.seed, i, TokenText(plan, i), r.top_logprobs);
    tokens.push_back(t.token);
    token_logprobs.push_back(t.logprob);
    Json alternatives = Json::object();
    for (const auto& [token, logprob] : t.top) alternatives[token] = logprob;
    top.push_back(std::move(alternatives));
    offsets.push_back(i == 0 ? 0 : plan.ends[static_cast<size_t>(i - 1)]);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

Json TokenIdsJson(const CompletionPlan& plan, int64_t from, int64_t to) {
  Json ids = Json::array();
  for (int64_t i = from; i < std::min(to, plan.completion_tokens()); ++i)
    ids.push_back(TokenId(TokenText(plan, i)));
  return ids;
}

// One id per prompt token counted: the request's own ids when the prompt was
// ids, else ids drawn from the seed.
Json PromptTokenIdsJson(const CompletionRequest& r) {
  if (!r.prompt_ids.empty()) return r.prompt_ids;
  Json ids = Json::array();
  SimRng rng(SubSeed(r.seed, kPromptIdStream));
  for (int64_t i = 0; i < r.prompt_tokens; ++i) ids.push_back(rng.Below(kVocabularySize));
  return ids;
}

}  // namespace

std::string RenderCompletion(const CompletionRequest& r, const CompletionPlan& plan,
                             const ResponseMeta& meta) {
  Json choice;
  choice["index"] = 0;
  choice["logprobs"] = LogprobsJson(r, plan, 0, plan.completion_tokens());
  choice["finish_reason"] = plan.finish_reason;
  choice["stop_reason"] = nullptr;
  if (r.kind == ApiKind::kChat) {
    Json message;
    message["role"] = "assistant";
    if (plan.tool_call) {
      message["content"] = nullptr;
      Json calls = Json::array();
      for (size_t i = 0; i < plan.calls.size(); ++i) {
        Json call;
        call["id"] = plan.calls[i].id;
        call["type"] = "function";
        call["function"] = {{"name", plan.calls[i].name},
                            {"arguments", std::string(plan.Arguments(i))}};
        calls.push_back(std::move(call));
      }
      message["tool_calls"] = std::move(calls);
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
  if (r.return_token_ids) {
    // vLLM: prompt ids at the top of a chat response, inside the choice of a text completion.
    body["choices"][0]["token_ids"] = TokenIdsJson(plan, 0, plan.completion_tokens());
    if (r.kind == ApiKind::kChat) body["prompt_token_ids"] = PromptTokenIdsJson(r);
    else body["choices"][0]["prompt_token_ids"] = PromptTokenIdsJson(r);
  }
  return DumpJson(body);
}

StreamRenderer::StreamRenderer(const CompletionRequest* request, const CompletionPlan* plan,
                               ResponseMeta meta)
    : request_(request), plan_(plan), meta_(std::move(meta)) {
  prefix_ = "data: {\"id\":" + DumpJson(meta_.id) + ",\"object\":" +
            (request_->kind == ApiKind::kChat ? "\"chat.completion.chunk\"" : "\"text_completion\"") +
            ",\"created\":" + std::to_string(meta_.created) + ",\"model\":" + DumpJson(request_->model) +
            ",";
  head_ = prefix_ + "\"choices\":[{\"index\":0,";
}

std::string StreamRenderer::TokenFields(int64_t from, int64_t to) const {
  std::string out = ",\"logprobs\":" + DumpJson(LogprobsJson(*request_, *plan_, from, to));
  if (request_->return_token_ids) out += ",\"token_ids\":" + DumpJson(TokenIdsJson(*plan_, from, to));
  return out;
}

std::string StreamRenderer::Tokens(int64_t from, int64_t to) {
  std::string out;
  const bool chat = request_->kind == ApiKind::kChat;
  if (chat && !role_sent_) {
    // vLLM sends the prompt's token ids with the first chunk of a chat stream.
    const std::string head =
        request_->return_token_ids
            ? prefix_ + "\"prompt_token_ids\":" + DumpJson(PromptTokenIdsJson(*request_)) +
                  ",\"choices\":[{\"index\":0,"
            : head_;
    out += head + "\"delta\":{\"role\":\"assistant\",\"content\":" +
           (plan_->tool_call ? "null" : "\"\"") + "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
    role_sent_ = true;
  }
  if (from >= to) return out;
  if (plan_->tool_call) {
    // One entry per call the token range touches; a call's first chunk names it.
    Json calls = Json::array();
    for (size_t i = 0; i < plan_->calls.size(); ++i) {
      const PlannedToolCall& c = plan_->calls[i];
      if (to <= c.first || from >= c.end) continue;
      const std::string args(plan_->Pieces(std::max(from, c.first + 1), std::min(to, c.end)));
      Json call;
      call["index"] = i;
      if (from <= c.first) {
        call["id"] = c.id;
        call["type"] = "function";
        call["function"] = {{"name", c.name}, {"arguments", args}};
      } else {
        call["function"] = {{"arguments", args}};
      }
      calls.push_back(std::move(call));
    }
    Json delta;
    delta["tool_calls"] = std::move(calls);
    out += head_ + "\"delta\":" + DumpJson(delta) + TokenFields(from, to) + ",\"finish_reason\":null}]}\n\n";
    return out;
  }
  const std::string text = DumpJson(Json(std::string(plan_->Pieces(from, to))));
  if (chat) {
    out += head_ + "\"delta\":{\"content\":" + text + "}" + TokenFields(from, to) +
           ",\"finish_reason\":null}]}\n\n";
  } else {
    // vLLM sends the prompt's token ids in the first choice of a text stream.
    std::string prompt_ids;
    if (request_->return_token_ids && !prompt_ids_sent_)
      prompt_ids = "\"prompt_token_ids\":" + DumpJson(PromptTokenIdsJson(*request_)) + ",";
    prompt_ids_sent_ = true;
    out += head_ + prompt_ids + "\"text\":" + text + TokenFields(from, to) + ",\"finish_reason\":null}]}\n\n";
  }
  return out;
}

std::string StreamRenderer::Finish() {
  std::string out = Tokens(0, 0);
  const std::string finish = DumpJson(Json(plan_->finish_reason));
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
    out += "data: " + DumpJson(usage_chunk) + "\n\n";
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
    return DumpJson(partial);
  }
  if (variant == 0) {
    StreamRenderer renderer(&r, &plan, meta);
    std::string events = renderer.Tokens(0, plan.completion_tokens());
    size_t last = events.rfind("data: ");
    std::string event = events.substr(last, (events.size() - last) / 2);
    return event + "\n\ndata: [DONE]\n\n";
  }
  return "data: " + DumpJson(partial) + "\n\ndata: [DONE]\n\n";
}

std::string RenderError(int code, const std::string& type, const std::string& message) {
  Json error;
  error["message"] = message;
  error["type"] = type;
  error["param"] = nullptr;
  error["code"] = code;
  Json body;
  body["error"] = std::move(error);
  return DumpJson(body);
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
  return DumpJson(body);
}

}  // namespace matrix::llm_sim
