// Tree -> Pipeline: typed reads of keys with their errors, then one builder
// per section (name, dataset, run, models, roles, flow).
#include "common/config/loader/pipeline_builder.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>

#include "common/base/files.h"
#include "common/config/loader/compose.h"
#include "common/config/loader/config_schema.h"
#include "common/config/loader/flow_check.h"

namespace matrix::config::loader_internal {

namespace fs = std::filesystem;

namespace {

class Builder {
 public:
  Builder(const std::string& top_file, Diag* diag, const LoadOptions& options)
      : top_file_(top_file), diag_(diag), options_(options) {}

  void Build(CNode* root, Pipeline* p) {
    CheckKeys(*root, "", kTopKeys, "top-level");
    BuildName(*root, p);
    if (Section(*root, "dataset", true) != nullptr) BuildDataset(root->Find("dataset"), p);
    if (const CNode* r = Section(*root, "run", false)) BuildRun(*r, p);
    if (p->run.output_dir.empty()) p->run.output_dir = "runs/" + p->name;
    if (const CNode* d = root->Find("description")) {
      if (d->IsString()) p->description = d->str();
      else if (d->kind != CNode::Kind::kNull) diag_->At(*d, "description", "expected a string, got " + Describe(*d));
    }
    for (const char* free_form : {"params", "simulator"}) {
      const CNode* m = root->Find(free_form);
      if (m != nullptr && m->kind != CNode::Kind::kMap && m->kind != CNode::Kind::kNull) {
        diag_->At(*m, free_form, "expected a map, got " + Describe(*m));
      }
    }
    if (CNode* m = root->Find("models")) BuildModels(m, p);
    if (const CNode* r = root->Find("roles")) BuildRoles(*r, p);
    else diag_->Error(top_file_, 0, "roles", "missing 'roles'");
    if (const CNode* f = Section(*root, "flow", true)) BuildFlow(*f, p);
    CheckFlow(*root, flow_nodes_, options_, p, diag_);
  }

 private:
  // ---- typed access ----
  const CNode* Section(const CNode& parent, const std::string& key, bool required) {
    const CNode* n = parent.Find(key);
    if (n == nullptr || n->kind == CNode::Kind::kNull) {
      if (required) {
        if (n != nullptr) diag_->AtKey(*n, key, "must not be empty");
        else diag_->Error(top_file_, 0, key, "missing '" + key + "'");
      }
      return nullptr;
    }
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, key, "expected a map, got " + Describe(*n));
      return nullptr;
    }
    return n;
  }

  void CheckKeys(const CNode& map, const std::string& path, const std::vector<std::string>& known,
                 const std::string& what) {
    for (const auto& e : map.entries) {
      if (!Contains(known, e.key)) {
        diag_->AtKey(e.value, Join(path, e.key), "unknown " + what + " key" + Suggest(e.key, known));
      }
    }
  }

  // Optional value: nullptr when absent or null.
  static const CNode* Get(const CNode& map, const std::string& key) {
    const CNode* n = map.Find(key);
    return (n == nullptr || n->kind == CNode::Kind::kNull) ? nullptr : n;
  }

  void Missing(const CNode& map, const std::string& path, const std::string& key, const std::string& why = "") {
    diag_->AtKey(map, Join(path, key), "missing required key '" + key + "'" + why);
  }

  bool GetString(const CNode& map, const std::string& path, const std::string& key, std::string* out,
                 bool required = false) {
    const CNode* n = Get(map, key);
    if (n == nullptr) {
      if (required) Missing(map, path, key);
      return false;
    }
    if (!n->IsString()) {
      diag_->At(*n, Join(path, key), "expected a string, got " + Describe(*n));
      return false;
    }
    *out = n->str();
    if (required && out->empty()) {
      diag_->At(*n, Join(path, key), "must not be empty");
      return false;
    }
    return true;
  }

  template <typename T>
  void GetInt(const CNode& map, const std::string& path, const std::string& key, T* out, int64_t min,
              int64_t max = std::numeric_limits<int32_t>::max()) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kScalar || !n->scalar.is_number_integer()) {
      diag_->At(*n, Join(path, key), "expected an integer, got " + Describe(*n));
      return;
    }
    int64_t v = n->scalar.get<int64_t>();
    if (v < min || v > max) {
      std::string range = min == 1 ? "a positive integer" : min == 0 ? "zero or a positive integer" : "at least " + std::to_string(min);
      if (v > max) range = "at most " + std::to_string(max);
      diag_->At(*n, Join(path, key), "must be " + range + ", got " + std::to_string(v));
      return;
    }
    *out = static_cast<T>(v);
  }

  void GetDouble(const CNode& map, const std::string& path, const std::string& key, double* out,
                 bool allow_zero) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kScalar || !n->scalar.is_number()) {
      diag_->At(*n, Join(path, key), "expected a number, got " + Describe(*n));
      return;
    }
    double v = n->scalar.get<double>();
    if (!(v > 0 || (allow_zero && v == 0)) || !std::isfinite(v)) {
      diag_->At(*n, Join(path, key), std::string("must be a ") + (allow_zero ? "non-negative" : "positive") +
                                         " number, got " + ToDisplayString(n->scalar));
      return;
    }
    *out = v;
  }

  void GetBool(const CNode& map, const std::string& path, const std::string& key, bool* out) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kScalar || !n->scalar.is_boolean()) {
      diag_->At(*n, Join(path, key), "expected true or false, got " + Describe(*n));
      return;
    }
    *out = n->scalar.get<bool>();
  }

  // A list of strings; a single string counts as a list of one.
  bool GetStringList(const CNode& map, const std::string& path, const std::string& key,
                     std::vector<std::string>* out) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return false;
    if (n->IsString()) {
      out->push_back(n->str());
      return true;
    }
    if (n->kind != CNode::Kind::kList) {
      diag_->At(*n, Join(path, key), "expected a list of strings, got " + Describe(*n));
      return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n->items.size(); ++i) {
      const CNode& item = n->items[i];
      if (!item.IsString()) {
        diag_->At(item, Join(path, key) + "[" + std::to_string(i) + "]", "expected a string, got " + Describe(item));
        ok = false;
        continue;
      }
      out->push_back(item.str());
    }
    return ok;
  }

  void GetMap(const CNode& map, const std::string& path, const std::string& key, Json* out) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return;
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, Join(path, key), "expected a map, got " + Describe(*n));
      return;
    }
    *out = ToJson(*n);
  }

  // A string that must be one of `choices` (in the order the error lists them).
  template <typename T>
  void GetChoice(const CNode& map, const std::string& path, const std::string& key,
                 const std::vector<std::pair<std::string, T>>& choices, T* out) {
    std::string value;
    if (!GetString(map, path, key, &value)) return;
    std::string names;
    for (const auto& [name, v] : choices) {
      if (name == value) {
        *out = v;
        return;
      }
      names += (names.empty() ? "'" : choices.back().first == name ? " or '" : ", '") + name + "'";
    }
    diag_->AtKey(*Get(map, key), Join(path, key), "must be " + names + ", not '" + value + "'");
  }

  // response_format of an llm role: {type: text | json_object | json_schema};
  // a json_schema's schema (under json_schema.schema, or `schema` directly)
  // must be a valid JSON Schema: it is compiled here, once.
  void GetResponseFormat(const CNode& role, const std::string& path, RoleConfig* rc) {
    const CNode* n = Get(role, "response_format");
    if (n == nullptr) return;
    const std::string fp = path + ".response_format";
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, fp, "expected a map {type: json_object | json_schema ...}, got " + Describe(*n));
      return;
    }
    Json format = ToJson(*n);
    const std::string type = format.value("type", "");
    if (type == "text") return;
    if (type == "json_object") {
      rc->response_format = format;
      return;
    }
    if (type != "json_schema") {
      const CNode* t = n->Find("type");
      diag_->At(t ? *t : *n, fp + ".type", "expected text, json_object or json_schema, got '" + type + "'");
      return;
    }
    // The schema as written: json_schema.schema, or the shorthand `schema`.
    const CNode* js = n->Find("json_schema");
    const CNode* sn = js ? js->Find("schema") : n->Find("schema");
    const std::string sp = js ? fp + ".json_schema.schema" : fp + ".schema";
    if (sn == nullptr) {
      diag_->AtKey(js ? *js : *n, js ? fp + ".json_schema" : fp, "a json_schema response_format needs a schema");
      return;
    }
    Json schema = ToJson(*sn);
    auto compiled = JsonSchema::Compile(schema);
    if (!compiled.ok()) {
      diag_->At(*sn, sp, compiled.status().message());
      return;
    }
    if (!js) {
      Json wrapped = {{"name", rc->name}, {"schema", schema}, {"strict", true}};
      format.erase("schema");
      format["json_schema"] = std::move(wrapped);
    } else if (!format["json_schema"].contains("name")) {
      format["json_schema"]["name"] = rc->name;
    }
    rc->response_format = std::move(format);
    rc->response_schema = std::make_shared<const JsonSchema>(std::move(*compiled));
  }

  // Expression text from a string (or a boolean / number written bare).
  std::optional<Expr> GetExpr(const CNode& map, const std::string& path, const std::string& key, bool required) {
    const CNode* n = Get(map, key);
    if (n == nullptr) {
      if (required) Missing(map, path, key);
      return std::nullopt;
    }
    return CompileExpr(*n, Join(path, key));
  }

  std::optional<Expr> CompileExpr(const CNode& n, const std::string& key) {
    std::string text;
    if (n.IsString()) {
      text = n.str();
    } else if (n.kind == CNode::Kind::kScalar) {
      text = DumpJson(n.scalar);
    } else {
      diag_->At(n, key, "expected an expression (a string), got " + Describe(n));
      return std::nullopt;
    }
    auto e = Expr::Parse(text);
    if (!e.ok()) {
      diag_->At(n, key, "invalid expression '" + text + "': " + e.status().message());
      return std::nullopt;
    }
    return std::move(e).value();
  }

  std::optional<Template> GetTemplate(const CNode& map, const std::string& path, const std::string& key) {
    const CNode* n = Get(map, key);
    if (n == nullptr) return std::nullopt;
    const std::string full = Join(path, key);
    if (!n->IsString()) {
      diag_->At(*n, full, "expected a template string, got " + Describe(*n));
      return std::nullopt;
    }
    int tline = 0;
    auto t = Template::ParseWithLine(n->str(), full, &tline);
    if (!t.ok()) {
      std::string msg = t.status().message();
      std::string prefix = full + ":" + std::to_string(tline) + ": ";
      if (msg.rfind(prefix, 0) == 0) msg = msg.substr(prefix.size());
      int line = n->line;
      if (line > 0 && tline > 0) line += (n->block ? 1 : 0) + tline - 1;
      diag_->Error(n->file, line, full, "template line " + std::to_string(tline) + ": " + msg);
      return std::nullopt;
    }
    return std::move(t).value();
  }

  // ---- sections ----
  void BuildName(const CNode& root, Pipeline* p) {
    const CNode* n = Get(root, "name");
    if (n == nullptr) {
      p->name = fs::path(top_file_).stem().string();
      return;
    }
    if (!n->IsString() && !(n->kind == CNode::Kind::kScalar && n->scalar.is_number_integer())) {
      diag_->At(*n, "name", "expected a string, got " + Describe(*n));
      return;
    }
    p->name = ToDisplayString(n->scalar);
    bool ok = !p->name.empty() && std::all_of(p->name.begin(), p->name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
    });
    if (!ok) diag_->At(*n, "name", "must be non-empty and use only letters, digits, '_', '-' and '.'");
  }

  void BuildDataset(CNode* d, Pipeline* p) {
    const std::string path = "dataset";
    CheckKeys(*d, path, kDatasetKeys, "dataset");
    DatasetConfig& ds = p->dataset;
    std::string raw;
    if (GetString(*d, path, "path", &raw, true)) {
      CNode* n = d->Find("path");
      ds.path = ResolvePath(raw, n->file);
      n->scalar = ds.path;
      std::error_code ec;
      if (!fs::exists(ds.path, ec)) diag_->At(*n, "dataset.path", "dataset '" + ds.path + "' does not exist");
    }
    GetInt(*d, path, "limit", &ds.limit, 0, std::numeric_limits<int64_t>::max());
    GetInt(*d, path, "partitions", &ds.partitions, 1, 1000000);
    GetString(*d, path, "id_field", &ds.id_field);
    GetStringList(*d, path, "required_fields", &ds.required_fields);
  }

  void BuildRun(const CNode& r, Pipeline* p) {
    const std::string path = "run";
    CheckKeys(r, path, kRunKeys, "run");
    RunConfig& run = p->run;
    GetInt(r, path, "max_concurrent_tasks", &run.max_concurrent_tasks, 1);
    GetInt(r, path, "trials", &run.trials, 1);
    GetInt(r, path, "max_attempts", &run.max_attempts, 1);
    GetInt(r, path, "offload_threshold_bytes", &run.offload_threshold_bytes, 0, std::numeric_limits<int64_t>::max());
    GetString(r, path, "output_dir", &run.output_dir);
    GetInt(r, path, "workers", &run.workers, 1, 4096);
    GetDouble(r, path, "task_timeout_s", &run.task_timeout_s, false);
    GetInt(r, path, "seed", &run.seed, 0, std::numeric_limits<int64_t>::max());
    GetInt(r, path, "max_steps_in_place", &run.max_steps_in_place, 0, 1000000);
    GetChoice(r, path, "schedule", {{"row", RunConfig::Schedule::kRow}, {"batch", RunConfig::Schedule::kBatch}},
              &run.schedule);
    GetChoice(r, path, "records", {{"all", RunConfig::Records::kAll}, {"done", RunConfig::Records::kDone}},
              &run.records);
    GetChoice(r, path, "output_compression",
              {{"none", RunConfig::OutputCompression::kNone}, {"zstd", RunConfig::OutputCompression::kZstd}},
              &run.output_compression);
  }

  void BuildModels(CNode* models, Pipeline* p) {
    if (models->kind == CNode::Kind::kNull) return;
    if (models->kind != CNode::Kind::kMap) {
      diag_->At(*models, "models", "expected a map of model names, got " + Describe(*models));
      return;
    }
    for (auto& e : models->entries) {
      const std::string path = "models." + e.key;
      CNode& m = e.value;
      if (m.kind != CNode::Kind::kMap) {
        diag_->At(m, path, "expected a map (endpoints, model, ...), got " + Describe(m));
        continue;
      }
      CheckKeys(m, path, kModelKeys, "model");
      ModelConfig mc;
      mc.name = e.key;
      if (!GetStringList(m, path, "endpoints", &mc.endpoints)) {
        if (Get(m, "endpoints") == nullptr) Missing(m, path, "endpoints", " (URLs, or [sim] for the simulator)");
      } else if (mc.endpoints.empty()) {
        diag_->At(*m.Find("endpoints"), path + ".endpoints", "must list at least one endpoint");
      } else {
        for (size_t i = 0; i < mc.endpoints.size(); ++i) {
          const std::string& url = mc.endpoints[i];
          bool ok = url == "sim" ? mc.endpoints.size() == 1
                                 : (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) && url.size() > 8;
          if (!ok) {
            diag_->At(*m.Find("endpoints"), path + ".endpoints",
                      url == "sim" ? "'sim' cannot be mixed with other endpoints"
                                   : "'" + url + "' is not an http:// or https:// URL (or 'sim')");
          }
        }
      }
      GetString(m, path, "model", &mc.model, true);
      GetString(m, path, "api_key_env", &mc.api_key_env);
      if (GetString(m, path, "api_key_file", &mc.api_key_file) && !mc.api_key_file.empty()) {
        CNode* n = m.Find("api_key_file");
        mc.api_key_file = ResolvePath(mc.api_key_file, n->file);
        n->scalar = mc.api_key_file;
      }
      if (!mc.api_key_env.empty() && !mc.api_key_file.empty()) {
        diag_->AtKey(m, path, "set at most one of api_key_env and api_key_file");
      }
      GetInt(m, path, "max_concurrency_per_endpoint", &mc.max_concurrency_per_endpoint, 1);
      GetDouble(m, path, "timeout_s", &mc.timeout_s, false);
      GetDouble(m, path, "outage_s", &mc.outage_s, false);
      GetDouble(m, path, "patience_factor", &mc.patience_factor, true);
      GetInt(m, path, "max_retries", &mc.max_retries, 0, 100);
      GetDouble(m, path, "breaker_cooldown_s", &mc.breaker_cooldown_s, false);
      GetDouble(m, path, "requests_per_s", &mc.requests_per_s, true);
      GetBool(m, path, "sticky", &mc.sticky);
      GetMap(m, path, "sampling", &mc.sampling);
      GetBool(m, path, "logprobs", &mc.logprobs);
      GetInt(m, path, "top_logprobs", &mc.top_logprobs, 0, 20);
      GetBool(m, path, "token_ids", &mc.token_ids);
      if (mc.top_logprobs > 0 && !mc.logprobs) diag_->At(*m.Find("top_logprobs"), path + ".top_logprobs", "top_logprobs needs logprobs: true");
      mc.price = GetPrice(m, path);
      p->models.emplace(e.key, std::move(mc));
    }
    // One currency per pipeline: costs of different models add up.
    const ModelConfig* first = nullptr;
    for (const auto& e : models->entries) {
      auto it = p->models.find(e.key);
      if (it == p->models.end() || !it->second.price) continue;
      if (first == nullptr) {
        first = &it->second;
      } else if (it->second.price->currency != first->price->currency) {
        const CNode* price = e.value.Find("price");
        const CNode* currency = price != nullptr ? price->Find("currency") : nullptr;
        const std::string key = "models." + e.key + ".price.currency";
        const std::string msg = "'" + it->second.price->currency + "' differs from models." + first->name +
                                "'s '" + first->price->currency + "'; every priced model needs the same currency";
        if (currency != nullptr) {
          diag_->At(*currency, key, msg);
        } else {
          diag_->AtKey(*price, key, msg);
        }
      }
    }
  }

  // models.<name>.price: both prices required, non-negative numbers.
  std::optional<PriceConfig> GetPrice(const CNode& m, const std::string& model_path) {
    const CNode* n = Get(m, "price");
    if (n == nullptr) return std::nullopt;
    const std::string path = model_path + ".price";
    if (n->kind != CNode::Kind::kMap) {
      diag_->At(*n, path,
                "expected a map {input_per_million, output_per_million, currency}, got " + Describe(*n));
      return std::nullopt;
    }
    CheckKeys(*n, path, kPriceKeys, "price");
    PriceConfig price;
    bool ok = true;
    const std::pair<const char*, double*> amounts[] = {{"input_per_million", &price.input_per_million},
                                                       {"output_per_million", &price.output_per_million}};
    for (const auto& [key, out] : amounts) {
      if (Get(*n, key) == nullptr) {
        Missing(*n, path, key, " (per million tokens; 0 when free)");
        ok = false;
        continue;
      }
      double v = -1;  // stays negative when GetDouble reports an error
      GetDouble(*n, path, key, &v, /*allow_zero=*/true);
      if (v < 0) ok = false;
      *out = v;
    }
    if (Get(*n, "currency") != nullptr) {
      if (!GetString(*n, path, "currency", &price.currency, /*required=*/true)) ok = false;
    }
    if (!ok) return std::nullopt;
    return price;
  }

  void BuildRoles(const CNode& roles, Pipeline* p) {
    if (roles.kind != CNode::Kind::kMap) {
      diag_->At(roles, "roles", "expected a map of role names, got " + Describe(roles));
      return;
    }
    if (roles.entries.empty()) diag_->AtKey(roles, "roles", "no roles defined");
    for (const auto& e : roles.entries) {
      const std::string path = "roles." + e.key;
      const CNode& r = e.value;
      if (r.kind != CNode::Kind::kMap) {
        diag_->At(r, path, "expected a map (type, ...), got " + Describe(r));
        continue;
      }
      RoleConfig rc;
      rc.name = e.key;
      BuildRole(r, path, &rc);
      // Kept even when invalid, so steps naming it report no second error.
      p->roles.emplace(e.key, std::move(rc));
    }
  }

  void BuildRole(const CNode& r, const std::string& path, RoleConfig* rc) {
    std::string type;
    if (!GetString(r, path, "type", &type, true)) return;
    static const std::vector<std::string> kTypeNames = {"llm",  "extract", "compare", "filter", "tool",
                                                        "exec", "reward",  "noop",    "message"};
    auto it = std::find(kTypeNames.begin(), kTypeNames.end(), type);
    if (it == kTypeNames.end()) {
      diag_->At(*r.Find("type"), path + ".type",
                "unknown role type '" + type + "'" + Suggest(type, kTypeNames) +
                    " (llm, extract, compare, filter, tool, exec, reward, noop, message)");
      return;
    }
    rc->type = static_cast<RoleType>(it - kTypeNames.begin());
    const std::vector<std::string>* own = nullptr;
    for (const auto& [t, keys] : kRoleTypeKeys) {
      if (t == rc->type) own = &keys;
    }
    const std::vector<std::string> all = AllRoleKeys();
    for (const auto& e : r.entries) {
      if (Contains(kRoleCommonKeys, e.key) || Contains(*own, e.key)) continue;
      if (Contains(all, e.key)) {
        diag_->AtKey(e.value, Join(path, e.key), "does not apply to roles of type " + type);
      } else {
        std::vector<std::string> cands = kRoleCommonKeys;
        cands.insert(cands.end(), own->begin(), own->end());
        diag_->AtKey(e.value, Join(path, e.key), "unknown role key" + Suggest(e.key, cands));
      }
    }
    GetInt(r, path, "concurrency", &rc->concurrency, 1, 10000000);
    switch (rc->type) {
      case RoleType::kLlm:
        GetString(r, path, "model", &rc->model, true);
        rc->system = GetTemplate(r, path, "system");
        rc->prompt = GetTemplate(r, path, "prompt");
        GetBool(r, path, "conversation", &rc->conversation);
        GetMap(r, path, "sampling", &rc->sampling);
        if (const CNode* t = Get(r, "tools")) {
          if (t->kind != CNode::Kind::kList) {
            diag_->At(*t, path + ".tools", "expected a list of tool definitions, got " + Describe(*t));
          } else {
            rc->tools = ToJson(*t);
          }
        }
        GetString(r, path, "tools_from", &rc->tools_from);
        if (const CNode* tc = Get(r, "tool_choice")) {
          if (tc->IsString() || tc->kind == CNode::Kind::kMap) rc->tool_choice = ToJson(*tc);
          else diag_->At(*tc, path + ".tool_choice", "expected auto, none, required, a tool name or a map, got " + Describe(*tc));
        }
        GetResponseFormat(r, path, rc);
        GetInt(r, path, "format_retries", &rc->format_retries, 0, 20);
        break;
      case RoleType::kExtract: {
        rc->from = Get(r, "from") ? GetExpr(r, path, "from", false) : Expr::Parse("last.content").value();
        GetBool(r, path, "ignore_case", &rc->ignore_case);
        GetBool(r, path, "json", &rc->json);
        GetString(r, path, "var", &rc->var);
        bool has_regex = GetString(r, path, "regex", &rc->regex_source);
        if (has_regex == rc->json) {
          diag_->AtKey(r, path, has_regex ? "set either regex or json: true, not both"
                                          : "an extract role needs regex: \"...\" or json: true");
        }
        if (has_regex) {
          auto re = CompileRegex(rc->regex_source, rc->ignore_case);
          if (!re.ok()) diag_->At(*r.Find("regex"), path + ".regex", re.status().message());
          else rc->regex = std::move(re).value();
          if (rc->var.empty()) Missing(r, path, "var", " (the variable receiving the match)");
        }
        if (const CNode* f = Get(r, "fields")) {
          if (!rc->json) diag_->AtKey(*f, path + ".fields", "fields need json: true");
          if (f->kind != CNode::Kind::kMap) {
            diag_->At(*f, path + ".fields", "expected a map of variable -> path, got " + Describe(*f));
          } else {
            for (const auto& fe : f->entries) {
              const std::string fk = path + ".fields." + fe.key;
              if (!fe.value.IsString()) {
                diag_->At(fe.value, fk, "expected a dotted path (a string), got " + Describe(fe.value));
                continue;
              }
              const std::string& jp = fe.value.str();
              bool ok = !jp.empty() && jp.front() != '.' && jp.back() != '.' && jp.find("..") == std::string::npos;
              if (!ok) diag_->At(fe.value, fk, "'" + jp + "' is not a dotted path like scores.math");
              else rc->fields.emplace(fe.key, jp);
            }
          }
        }
        if (rc->json && rc->var.empty() && rc->fields.empty() && Get(r, "fields") == nullptr) {
          Missing(r, path, "var", " (or fields) for the parsed JSON");
        }
        break;
      }
      case RoleType::kCompare:
        rc->left = GetExpr(r, path, "left", true);
        rc->right = GetExpr(r, path, "right", true);
        GetString(r, path, "var", &rc->var, true);
        GetBool(r, path, "ignore_case", &rc->ignore_case);
        break;
      case RoleType::kFilter:
        rc->condition = GetExpr(r, path, "condition", true);
        break;
      case RoleType::kTool:
      case RoleType::kExec: {
        if (!GetStringList(r, path, "command", &rc->command)) {
          if (Get(r, "command") == nullptr) Missing(r, path, "command", " (the program and its arguments)");
        } else if (rc->command.empty() || rc->command[0].empty()) {
          diag_->At(*r.Find("command"), path + ".command", "must name a program");
        } else {
          // ./x and ../x are relative to the file that sets them (programs run
          // in a private folder of their own).
          const CNode* cn = r.Find("command");
          for (size_t i = 0; i < rc->command.size(); ++i) {
            std::string& arg = rc->command[i];
            if (arg.rfind("./", 0) != 0 && arg.rfind("../", 0) != 0) continue;
            const CNode* item = cn->kind == CNode::Kind::kList && i < cn->items.size() ? &cn->items[i] : cn;
            arg = ResolvePath(arg, item->file);
            if (!FileExists(arg)) diag_->At(*item, path + ".command", "no such file: " + arg);
          }
        }
        if (GetString(r, path, "sandbox", &rc->sandbox)) {
          static const std::vector<std::string> kSandboxes = {"bwrap", "apptainer", "none"};
          if (!Contains(kSandboxes, rc->sandbox)) {
            diag_->At(*r.Find("sandbox"), path + ".sandbox",
                      "unknown sandbox '" + rc->sandbox + "'" + Suggest(rc->sandbox, kSandboxes) + " (bwrap, apptainer, none)");
          } else if (rc->sandbox == "none") {
            diag_->WarnAtKey(*r.Find("sandbox"), path + ".sandbox",
                             "runs the program as a plain process: no file, network or process isolation");
          }
        }
        GetString(r, path, "image", &rc->image);
        if (rc->sandbox == "apptainer" && rc->image.empty()) Missing(r, path, "image", " (the Apptainer image)");
        GetDouble(r, path, "timeout_s", &rc->timeout_s, false);
        GetBool(r, path, "network", &rc->network);
        GetInt(r, path, "memory_mb", &rc->memory_mb, 1, std::numeric_limits<int64_t>::max());
        GetInt(r, path, "cpu_s", &rc->cpu_s, 0, std::numeric_limits<int64_t>::max());
        GetInt(r, path, "max_processes", &rc->max_processes, 1, 1000000);
        GetInt(r, path, "max_file_mb", &rc->max_file_mb, 1, std::numeric_limits<int64_t>::max());
        GetInt(r, path, "max_sessions", &rc->max_sessions, 1, 10000000);
        GetInt(r, path, "max_tool_calls", &rc->max_tool_calls, 1, 10000000);
        GetDouble(r, path, "idle_timeout_s", &rc->idle_timeout_s, false);
        if (const CNode* en = Get(r, "environment")) {
          if (en->kind != CNode::Kind::kMap) {
            diag_->At(*en, path + ".environment", "expected a map of variable -> value, got " + Describe(*en));
          } else {
            for (const auto& ee : en->entries) {
              if (ee.value.kind != CNode::Kind::kScalar || ee.value.scalar.is_null()) {
                diag_->At(ee.value, path + ".environment." + ee.key, "expected a string, got " + Describe(ee.value));
                continue;
              }
              rc->environment[ee.key] = ee.value.IsString() ? ee.value.str() : DumpJson(ee.value.scalar);
            }
          }
        }
        if (rc->type == RoleType::kExec) {
          rc->input = GetExpr(r, path, "input", false);
          GetString(r, path, "var", &rc->var);
        }
        break;
      }
      case RoleType::kReward:
        GetString(r, path, "env", &rc->env);
        GetString(r, path, "agent", &rc->agent);
        rc->termination = GetExpr(r, path, "termination", false);
        if (rc->env.empty()) {
          rc->expr = GetExpr(r, path, "expr", true);
          for (const char* k : {"agent", "termination"})
            if (Get(r, k)) diag_->AtKey(*r.Find(k), Join(path, k), "applies only with env: (an environment's reward)");
        } else if (Get(r, "expr")) {
          diag_->AtKey(*r.Find("expr"), path + ".expr", "set either expr or env, not both");
        }
        rc->var = "reward";
        GetString(r, path, "var", &rc->var);
        break;
      case RoleType::kMessage:
        rc->content = GetTemplate(r, path, "content");
        if (!rc->content && Get(r, "content") == nullptr) Missing(r, path, "content", " (the text of the turn)");
        GetString(r, path, "as", &rc->as);
        if (rc->as.empty()) rc->as = rc->name.empty() ? path.substr(path.rfind('.') + 1) : rc->name;
        break;
      case RoleType::kNoop:
        break;
    }
  }

  void BuildFlow(const CNode& f, Pipeline* p) {
    CheckKeys(f, "flow", kFlowKeys, "flow");
    FlowConfig& flow = p->flow;
    GetString(f, "flow", "start", &flow.start, true);
    GetInt(f, "flow", "max_steps", &flow.max_steps, 1, 10000000);
    GetInt(f, "flow", "max_tokens", &flow.max_tokens, 0, int64_t{1} << 50);
    const CNode* steps = Get(f, "steps");
    if (steps == nullptr) {
      Missing(f, "flow", "steps");
      return;
    }
    if (steps->kind != CNode::Kind::kMap) {
      diag_->At(*steps, "flow.steps", "expected a map of step names, got " + Describe(*steps));
      return;
    }
    for (const auto& e : steps->entries) {
      const std::string path = "flow.steps." + e.key;
      if (IsTerminalTarget(e.key)) {
        diag_->AtKey(e.value, path, "'" + e.key + "' is a reserved target name; rename the step");
        continue;
      }
      if (e.value.kind != CNode::Kind::kMap) {
        diag_->At(e.value, path, "expected a map (role, next, ...), got " + Describe(e.value));
        continue;
      }
      StepConfig sc;
      sc.name = e.key;
      BuildStep(e.value, path, &sc);
      flow.step_order.push_back(e.key);
      flow_nodes_.steps[e.key] = &e.value;
      flow.steps.emplace(e.key, std::move(sc));
    }
  }

  void BuildStep(const CNode& s, const std::string& path, StepConfig* sc) {
    CheckKeys(s, path, kStepKeys, "step");
    GetString(s, path, "role", &sc->role);
    if (const CNode* f = Get(s, "fanout")) {
      if (f->kind != CNode::Kind::kMap) {
        diag_->At(*f, path + ".fanout", "expected a map (branches or count/branch, join), got " + Describe(*f));
      } else {
        const std::string fp = path + ".fanout";
        CheckKeys(*f, fp, kFanoutKeys, "fanout");
        FanoutConfig fc;
        GetStringList(*f, fp, "branches", &fc.branches);
        GetInt(*f, fp, "count", &fc.count, 1, 100000);
        GetString(*f, fp, "branch", &fc.branch);
        GetString(*f, fp, "join", &fc.join);
        GetInt(*f, fp, "first", &fc.first, 0, 100000);
        GetDouble(*f, fp, "deadline_s", &fc.deadline_s, /*allow_zero=*/true);
        fc.value = GetExpr(*f, fp, "value", false);
        fc.score = GetExpr(*f, fp, "score", false);
        GetChoice(*f, fp, "combine",
                  {{"none", FanoutConfig::Combine::kNone}, {"concat", FanoutConfig::Combine::kConcat},
                   {"vote", FanoutConfig::Combine::kVote}, {"best", FanoutConfig::Combine::kBest}},
                  &fc.combine);
        if (fc.combine == FanoutConfig::Combine::kBest && !fc.score)
          diag_->AtKey(*f, fp, "combine: best needs a score expression");
        GetString(*f, fp, "var", &fc.var);
        const int width = fc.branches.empty() ? fc.count : static_cast<int>(fc.branches.size());
        if (fc.first > width && width > 0)
          diag_->At(*f->Find("first"), fp + ".first",
                    "first: " + std::to_string(fc.first) + " is more than the " + std::to_string(width) + " branches");
        bool by_list = !fc.branches.empty();
        bool by_count = fc.count > 0 || !fc.branch.empty();
        if (by_list == by_count) {
          diag_->AtKey(*f, fp, by_list ? "set either branches or count/branch, not both"
                                       : "a fan-out needs branches: [...] or count and branch");
        } else if (by_count && (fc.count <= 0 || fc.branch.empty())) {
          diag_->AtKey(*f, fp, "count and branch go together");
        }
        sc->fanout = std::move(fc);
      }
      if (!sc->role.empty()) diag_->At(*s.Find("role"), path + ".role", "a fan-out step runs no role");
    } else if (sc->role.empty() && Get(s, "role") == nullptr) {
      Missing(s, path, "role");
    }
    const CNode* next = Get(s, "next");
    if (next == nullptr) {
      sc->next.push_back(Transition{std::nullopt, kTargetDone, ""});
    } else if (next->kind == CNode::Kind::kScalar && next->IsString()) {
      sc->next.push_back(Transition{std::nullopt, next->str(), ""});
      flow_nodes_.targets.push_back({sc->name, next->str(), next});
    } else if (next->kind == CNode::Kind::kList) {
      bool seen_default = false;
      for (size_t i = 0; i < next->items.size(); ++i) {
        const CNode& rule = next->items[i];
        const std::string rp = path + ".next[" + std::to_string(i) + "]";
        if (rule.kind != CNode::Kind::kMap) {
          diag_->At(rule, rp, "expected a rule {if: ..., goto: ..., reason: ...}, got " + Describe(rule));
          continue;
        }
        CheckKeys(rule, rp, kRuleKeys, "rule");
        Transition t;
        if (Get(rule, "if") != nullptr) t.cond = GetExpr(rule, rp, "if", false);
        if (seen_default) {
          diag_->WarnAtKey(rule, rp, "never used: an earlier rule has no 'if' and always matches");
        }
        if (Get(rule, "if") == nullptr) seen_default = true;
        GetString(rule, rp, "goto", &t.target, true);
        GetString(rule, rp, "reason", &t.reason);
        if (!t.target.empty()) flow_nodes_.targets.push_back({sc->name, t.target, rule.Find("goto")});
        sc->next.push_back(std::move(t));
      }
      if (next->items.empty()) diag_->At(*next, path + ".next", "needs at least one rule");
    } else {
      diag_->At(*next, path + ".next", "expected a step name or a list of rules, got " + Describe(*next));
    }
    if (const CNode* set = Get(s, "set")) {
      if (set->kind != CNode::Kind::kMap) {
        diag_->At(*set, path + ".set", "expected a map of variable -> expression, got " + Describe(*set));
      } else {
        for (const auto& e : set->entries) {
          if (auto ex = CompileExpr(e.value, path + ".set." + e.key)) sc->set.push_back(SetVar{e.key, *ex});
        }
      }
    }
  }

  const std::string& top_file_;
  Diag* diag_;
  LoadOptions options_;
  FlowNodes flow_nodes_;
};

}  // namespace

void BuildPipeline(const std::string& top_file, const LoadOptions& options, CNode* root, Pipeline* p, Diag* diag) {
  Builder(top_file, diag, options).Build(root, p);
}

}  // namespace matrix::config::loader_internal
