// Pipeline loading: composition, interpolation, overrides, validation, and
// error reports that name file, line and key.
#include "common/config/pipeline_loader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test/support/test_util.h"

namespace matrix::config {
namespace {

namespace fs = std::filesystem;
using matrix::testing::SourcePath;
using matrix::testing::TempDir;

std::string Write(const TempDir& dir, const std::string& name, const std::string& text) {
  std::string path = dir.File(name);
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
  return path;
}

// A valid pipeline; tests append or replace parts of it.
const char kMinimal[] = R"(name: mini
dataset:
  path: data.jsonl
models:
  m:
    endpoints: [sim]
    model: tiny
roles:
  ask:
    type: llm
    model: m
    prompt: "{{ input.q }}"
flow:
  start: ask
  steps:
    ask:
      role: ask
      next: done
)";

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override { Write(dir_, "data.jsonl", "{\"q\": \"hi\"}\n"); }

  LoadResult Load(const std::string& name, const std::string& text, const std::vector<std::string>& overrides = {}) {
    return LoadPipeline(Write(dir_, name, text), overrides);
  }

  Pipeline LoadOk(const std::string& text, const std::vector<std::string>& overrides = {}) {
    LoadResult r = Load("p.yaml", text, overrides);
    for (const auto& e : r.errors) ADD_FAILURE() << e.ToString();
    EXPECT_TRUE(r.pipeline.has_value());
    return r.pipeline ? std::move(*r.pipeline) : Pipeline{};
  }

  static std::string All(const std::vector<ConfigError>& errors) {
    std::string out;
    for (const auto& e : errors) out += e.ToString() + "\n";
    return out;
  }

  // Whether some error has this file, line and key and contains `text`.
  static bool Has(const std::vector<ConfigError>& errors, const std::string& file, int line,
                  const std::string& key, const std::string& text) {
    for (const auto& e : errors) {
      if (e.file == file && e.line == line && e.key == key && e.message.find(text) != std::string::npos) return true;
    }
    return false;
  }

  TempDir dir_;
};

TEST_F(LoaderTest, LoadsMinimalPipelineWithDefaults) {
  Pipeline p = LoadOk(kMinimal);
  EXPECT_EQ(p.name, "mini");
  EXPECT_EQ(p.dataset.path, fs::path(dir_.File("data.jsonl")).lexically_normal().string());
  EXPECT_EQ(p.dataset.limit, 0);
  EXPECT_EQ(p.dataset.partitions, 1);
  EXPECT_EQ(p.run.max_concurrent_tasks, 1000);
  EXPECT_EQ(p.run.trials, 1);
  EXPECT_EQ(p.run.max_attempts, 3);
  EXPECT_EQ(p.run.offload_threshold_bytes, 512);
  EXPECT_EQ(p.run.output_dir, "runs/mini");
  EXPECT_EQ(p.run.workers, 1);
  EXPECT_DOUBLE_EQ(p.run.task_timeout_s, 3600);
  const ModelConfig* m = p.Model("m");
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->simulated());
  EXPECT_EQ(m->max_concurrency_per_endpoint, 256);
  EXPECT_DOUBLE_EQ(m->timeout_s, 120);
  EXPECT_EQ(m->max_retries, 4);
  EXPECT_FALSE(m->sticky);
  const RoleConfig* r = p.Role("ask");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->type, RoleType::kLlm);
  EXPECT_EQ(r->concurrency, 1000);
  EXPECT_TRUE(r->conversation);
  ASSERT_TRUE(r->prompt.has_value());
  EXPECT_EQ(*r->prompt->Render({{"input", {{"q", "hello"}}}}), "hello");
  EXPECT_FALSE(r->system.has_value());
  EXPECT_EQ(p.flow.start, "ask");
  EXPECT_EQ(p.flow.max_steps, 200);
  const StepConfig* s = p.Step("ask");
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(s->next.size(), 1u);
  EXPECT_EQ(s->next[0].target, "done");
  EXPECT_EQ(p.Step("nope"), nullptr);
  EXPECT_NE(p.hash, 0u);
  EXPECT_EQ(p.merged["roles"]["ask"]["type"], "llm");
  EXPECT_TRUE(fs::path(p.source_path).is_absolute());
}

TEST_F(LoaderTest, FanOutLoadsForRunning) {
  const std::string path = SourcePath("test/data/pipelines/best_of_n.yaml");
  LoadResult r = LoadPipeline(path);
  ASSERT_TRUE(r.pipeline) << All(r.errors);
  const FanoutConfig& fan = *r.pipeline->Step("samples")->fanout;
  EXPECT_EQ(fan.first, 0);
  EXPECT_EQ(fan.combine, FanoutConfig::Combine::kNone);
  EXPECT_EQ(fan.var, "combined");
}

TEST_F(LoaderTest, FanOutSettingsAndTheirErrors) {
  const std::string path = Write(dir_, "fan.yaml", R"yaml(dataset: {path: data.jsonl}
models: {m: {endpoints: [sim], model: x}}
roles:
  a: {type: llm, model: m}
  j: {type: noop}
flow:
  start: fan
  max_tokens: 5000
  steps:
    fan:
      fanout:
        count: 3
        branch: a
        first: 4
        combine: majority
        join: j
      next: done
    other:
      fanout: {branches: [a], join: j}
    a:
      role: a
      next: join
    j:
      role: j
)yaml");
  LoadResult r = LoadPipeline(path);
  EXPECT_FALSE(r.pipeline);
  const std::string all = All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 14, "flow.steps.fan.fanout.first", "more than the 3 branches")) << all;
  EXPECT_TRUE(Has(r.errors, path, 15, "flow.steps.fan.fanout.combine",
                  "must be 'none', 'concat', 'vote' or 'best', not 'majority'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 19, "flow.steps.other.fanout.join", "already the join of fan-out step 'fan'")) << all;
}

TEST_F(LoaderTest, ALoopWithNoWayOutIsRefused) {
  const std::string path = Write(dir_, "loop.yaml", R"yaml(dataset: {path: data.jsonl}
models: {m: {endpoints: [sim], model: x}}
roles:
  a: {type: llm, model: m}
flow:
  start: ask
  steps:
    ask:
      role: a
      next: again
    again:
      role: a
      next: ask
)yaml");
  LoadResult r = LoadPipeline(path);
  EXPECT_FALSE(r.pipeline);
  EXPECT_TRUE(Has(r.errors, path, 10, "flow.steps.ask.next", "a cycle without a way out")) << All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 10, "flow.steps.ask.next", "'ask', 'again'")) << All(r.errors);
}

TEST_F(LoaderTest, FixturePipelineWithFanOutParses) {
  LoadOptions parse_only;
  parse_only.parse_only = true;
  LoadResult r = LoadPipeline(SourcePath("test/data/pipelines/best_of_n.yaml"), {}, parse_only);
  ASSERT_TRUE(r.pipeline) << All(r.errors);
  EXPECT_TRUE(r.warnings.empty()) << All(r.warnings);
  const Pipeline& p = *r.pipeline;
  EXPECT_EQ(p.name, "best_of_n");
  EXPECT_EQ(p.run.output_dir, "runs/best_of_n-4");
  EXPECT_EQ(p.dataset.path, fs::path(SourcePath("test/data/mmlu_pro_2000.jsonl")).lexically_normal().string());
  EXPECT_EQ(p.models.size(), 2u);
  EXPECT_EQ(p.Model("large")->max_concurrency_per_endpoint, 64);
  const StepConfig* fan = p.Step("samples");
  ASSERT_TRUE(fan && fan->fanout);
  EXPECT_EQ(fan->fanout->count, 4);
  EXPECT_EQ(fan->fanout->BranchStarts(), std::vector<std::string>(4, "solve"));
  EXPECT_EQ(fan->fanout->join, "judge");
  EXPECT_EQ(p.Step("parse_answer")->next[0].target, "join");
  const RoleConfig* judge = p.Role("parse_judge");
  EXPECT_TRUE(judge->json);
  EXPECT_EQ(judge->fields.at("best"), "best");
  EXPECT_EQ(p.SamplingFor(*p.Role("judge")), Json::parse(R"({"temperature": 0, "max_tokens": 512})"));
  const StepConfig* pj = p.Step("parse_judge");
  ASSERT_EQ(pj->set.size(), 1u);
  EXPECT_EQ(pj->set[0].var, "final");
  ASSERT_EQ(pj->next.size(), 2u);
  EXPECT_EQ(pj->next[0].reason, "low_confidence");
  EXPECT_TRUE(*pj->next[0].cond->EvalBool({{"vars", {{"confidence", 0.1}}}}));
  EXPECT_EQ(*p.Role("score")->expr->Eval({{"vars", {{"final", "C"}}}, {"input", {{"answer", "C"}}}}), 1.0);
  EXPECT_EQ(p.Role("score")->var, "reward");
  std::string d = DescribePipeline(p);
  EXPECT_NE(d.find("samples fan-out 4 x solve, join judge -> parse_judge"), std::string::npos) << d;
  EXPECT_NE(d.find("parse_judge [parse_judge] -> if vars.confidence is number"), std::string::npos) << d;
  auto eight = LoadPipeline(SourcePath("test/data/pipelines/best_of_n.yaml"), {"params.samples=8"}, parse_only);
  ASSERT_TRUE(eight.pipeline) << All(eight.errors);
  EXPECT_EQ(eight.pipeline->Step("samples")->fanout->count, 8);
  EXPECT_NE(eight.pipeline->hash, p.hash);
}

TEST_F(LoaderTest, EveryShippedConfigLoads) {
  std::error_code ec;
  int seen = 0;
  for (const auto& entry : fs::directory_iterator(SourcePath("configs"), ec)) {
    if (entry.path().extension() != ".yaml") continue;
    ++seen;
    LoadResult r = LoadPipeline(entry.path().string());
    EXPECT_TRUE(r.pipeline.has_value()) << entry.path() << "\n" << All(r.errors);
  }
  if (seen == 0) GTEST_SKIP() << "no configs/*.yaml";
}

TEST_F(LoaderTest, DefaultsMergeInOrderMapsDeepListsReplaced) {
  Write(dir_, "base.yaml", R"(
params:
  a: 1
  deep: {x: 1, y: 2, list: [1, 2, 3]}
run:
  trials: 2
  max_attempts: 5
)");
  Write(dir_, "layers/second.yaml", R"(
defaults: [third]
params:
  deep: {y: 20, list: [9]}
)");
  Write(dir_, "layers/third.yaml", R"(
params:
  from_third: true
  a: 3
)");
  Pipeline p = LoadOk(std::string("defaults: [base.yaml, layers/second.yaml]\n") + kMinimal + R"(
params:
  a: 100
run:
  trials: 4
)");
  const Json& params = p.merged["params"];
  EXPECT_EQ(params["a"], 100);  // this file wins
  EXPECT_EQ(params["deep"]["x"], 1);
  EXPECT_EQ(params["deep"]["y"], 20);
  EXPECT_EQ(params["deep"]["list"], Json::parse("[9]"));
  EXPECT_EQ(params["from_third"], true);
  EXPECT_EQ(p.run.trials, 4);
  EXPECT_EQ(p.run.max_attempts, 5);
  EXPECT_FALSE(p.merged.contains("defaults"));
}

TEST_F(LoaderTest, SelfPositionInDefaults) {
  Write(dir_, "after.yaml", "run: {trials: 9}\n");
  Pipeline p = LoadOk(std::string("defaults: [_self_, after]\nrun: {trials: 2, workers: 3}\n") + kMinimal);
  EXPECT_EQ(p.run.trials, 9);
  EXPECT_EQ(p.run.workers, 3);
}

TEST_F(LoaderTest, DefaultsErrors) {
  LoadResult r = Load("p.yaml", std::string("defaults:\n  - missing.yaml\n") + kMinimal);
  EXPECT_TRUE(Has(r.errors, dir_.File("p.yaml"), 2, "defaults[0]", "cannot read")) << All(r.errors);
  Write(dir_, "a.yaml", "defaults: [b.yaml]\n");
  Write(dir_, "b.yaml", "defaults: [a.yaml]\n");
  r = Load("p.yaml", std::string("defaults: [a.yaml]\n") + kMinimal);
  ASSERT_FALSE(r.errors.empty());
  EXPECT_NE(All(r.errors).find("defaults cycle"), std::string::npos) << All(r.errors);
  EXPECT_FALSE(r.pipeline.has_value());
}

TEST_F(LoaderTest, DatasetPathIsRelativeToTheFileThatSetsIt) {
  Write(dir_, "shared/data/rows.jsonl", "{}\n");
  Write(dir_, "shared/dataset.yaml", "dataset:\n  path: data/rows.jsonl\n");
  std::string text = kMinimal;
  const std::string own = "dataset:\n  path: data.jsonl\n";
  text.replace(text.find(own), own.size(), "");
  Pipeline p = LoadOk("defaults: [shared/dataset.yaml]\n" + text);
  const std::string want = fs::path(dir_.File("shared/data/rows.jsonl")).lexically_normal().string();
  EXPECT_EQ(p.dataset.path, want);
  EXPECT_EQ(p.merged["dataset"]["path"], want);
}

TEST_F(LoaderTest, Interpolation) {
  setenv("MATRIX_CONFIG_TEST_VAR", "from-env", 1);
  unsetenv("MATRIX_CONFIG_TEST_UNSET");
  Pipeline p = LoadOk(std::string(kMinimal) + R"(
params:
  n: 2000
  temp: 0.25
  base: http://gpu1:8000/v1
  sampling: {temperature: 0.5, max_tokens: 64}
  name_copy: ${name}
  chained: ${params.name_copy}
  literal: \${not.a.ref}
  env: ${env:MATRIX_CONFIG_TEST_VAR}
  env_default: ${env:MATRIX_CONFIG_TEST_UNSET,fallback}
  first_endpoint: ${models.m.endpoints.0}
run:
  max_concurrent_tasks: ${params.n}
  output_dir: out/${name}-${params.n}-${params.temp}
)");
  EXPECT_EQ(p.run.max_concurrent_tasks, 2000);  // typed
  EXPECT_EQ(p.merged["run"]["max_concurrent_tasks"], 2000);
  EXPECT_EQ(p.run.output_dir, "out/mini-2000-0.25");
  const Json& params = p.merged["params"];
  EXPECT_EQ(params["chained"], "mini");
  EXPECT_EQ(params["literal"], "${not.a.ref}");
  EXPECT_EQ(params["env"], "from-env");
  EXPECT_EQ(params["env_default"], "fallback");
  EXPECT_EQ(params["first_endpoint"], "sim");

  Pipeline q = LoadOk(std::string(kMinimal) + R"(
params:
  sampling: {temperature: 0.5, max_tokens: 64}
  as_text: "cfg=${params.sampling}"
)");
  EXPECT_EQ(q.merged["params"]["as_text"], "cfg={\"max_tokens\":64,\"temperature\":0.5}");

  // A whole map copied by reference keeps its type.
  std::string text = kMinimal;
  text.replace(text.find("    model: tiny\n"), 16, "    model: tiny\n    sampling: ${params.s}\n");
  Pipeline r = LoadOk(text + "params:\n  s: {temperature: 0.1}\n");
  EXPECT_EQ(r.Model("m")->sampling, Json::parse(R"({"temperature": 0.1})"));
}

TEST_F(LoaderTest, InterpolationErrorsNameFileLineAndKey) {
  const std::string path = dir_.File("p.yaml");
  LoadResult r = Load("p.yaml", std::string(kMinimal) + R"(run:
  output_dir: runs/${nmae}
params:
  a: ${params.b}
  b: ${params.a}
  c: ${env:MATRIX_CONFIG_TEST_SURELY_UNSET}
  d: "${params"
)");
  EXPECT_FALSE(r.pipeline.has_value());
  EXPECT_TRUE(Has(r.errors, path, 20, "run.output_dir", "cannot resolve '${nmae}': no key 'nmae' (did you mean 'name'?)"))
      << All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 22, "params.a", "interpolation cycle")) << All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 24, "params.c", "environment variable 'MATRIX_CONFIG_TEST_SURELY_UNSET' is not set"))
      << All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 25, "params.d", "unterminated")) << All(r.errors);
}

TEST_F(LoaderTest, Overrides) {
  Pipeline p = LoadOk(kMinimal, {"run.max_concurrent_tasks=2000", "dataset.limit=50",
                                 "models.m.endpoints=[http://h:1/v1, https://h2/v1]",
                                 "models.m.sampling.temperature=0.2", "+params.extra={a: [1, 2]}",
                                 "++run.trials=3", "roles.ask.concurrency=7", "name=renamed",
                                 "run.output_dir="});
  EXPECT_EQ(p.run.max_concurrent_tasks, 2000);
  EXPECT_EQ(p.dataset.limit, 50);
  EXPECT_EQ(p.Model("m")->endpoints, (std::vector<std::string>{"http://h:1/v1", "https://h2/v1"}));
  EXPECT_FALSE(p.Model("m")->simulated());
  EXPECT_EQ(p.Model("m")->sampling, Json::parse(R"({"temperature": 0.2})"));
  EXPECT_EQ(p.merged["params"]["extra"], Json::parse(R"({"a": [1, 2]})"));
  EXPECT_EQ(p.run.trials, 3);
  EXPECT_EQ(p.Role("ask")->concurrency, 7);
  EXPECT_EQ(p.name, "renamed");
  EXPECT_EQ(p.run.output_dir, "runs/renamed");

  // Overrides apply before interpolation.
  Pipeline q = LoadOk(std::string(kMinimal) + "params: {n: 5}\nrun: {trials: '${params.n}'}\n", {"params.n=8"});
  EXPECT_EQ(q.run.trials, 8);

  // A new model and a list element.
  Pipeline r = LoadOk(kMinimal, {"+models.big={endpoints: [http://a:1/v1], model: big}", "roles.ask.model=big",
                                 "models.big.endpoints.0=http://b:2/v1"});
  EXPECT_EQ(r.Model("big")->endpoints[0], "http://b:2/v1");
  EXPECT_EQ(r.Role("ask")->model, "big");

  // Removing a key.
  Pipeline s = LoadOk(std::string(kMinimal) + "run: {trials: 4}\n", {"~run.trials"});
  EXPECT_EQ(s.run.trials, 1);
}

TEST_F(LoaderTest, OverrideErrors) {
  LoadResult r = Load("p.yaml", kMinimal,
                      {"run.max_concurent_tasks=5", "models.other.model=x", "+run.trials=3", "+name=x",
                       "novalue", "models.m.endpoints.5=http://x/v1", "name.sub=1", "run.trials=[1, 2",
                       "~params.nothing"});
  EXPECT_FALSE(r.pipeline.has_value());
  const std::string all = All(r.errors);
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "run.max_concurent_tasks",
                  "unknown key (did you mean 'max_concurrent_tasks'?); use '+run.max_concurent_tasks=...'"))
      << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "models.other", "unknown key")) << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "name", "already exists")) << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "", "'novalue' is not of the form key.path=value")) << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "models.m.endpoints.5", "no list element 5")) << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "name.sub", "not a map")) << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "run.trials", "invalid YAML")) << all;
  EXPECT_TRUE(Has(r.errors, "<command line>", 0, "params.nothing", "no such key")) << all;
  // +run.trials is fine when run.trials does not exist yet.
  EXPECT_EQ(std::count_if(r.errors.begin(), r.errors.end(), [](const ConfigError& e) { return e.key == "run.trials"; }),
            1);
  // A wrongly typed override is reported at the key with the command line as its source.
  LoadResult t = Load("p.yaml", kMinimal, {"run.trials=many"});
  EXPECT_TRUE(Has(t.errors, "<command line>", 0, "run.trials", "expected an integer, got a string 'many'"))
      << All(t.errors);
  EXPECT_EQ(t.errors[0].ToString(), "<command line>: run.trials: expected an integer, got a string 'many'");
}

TEST_F(LoaderTest, MalformedYamlNamesFileAndLine) {
  const std::string path = dir_.File("bad.yaml");
  LoadResult r = Load("bad.yaml", "name: x\nroles:\n  a:\n    type: llm\n    prompt: [unclosed\n  b: 1\n");
  ASSERT_EQ(r.errors.size(), 1u) << All(r.errors);
  EXPECT_EQ(r.errors[0].file, path);
  EXPECT_GE(r.errors[0].line, 5);
  EXPECT_NE(r.errors[0].message.find("invalid YAML"), std::string::npos);
  EXPECT_NE(r.errors[0].ToString().find(path + ":" + std::to_string(r.errors[0].line) + ": invalid YAML"),
            std::string::npos);

  r = Load("bad2.yaml", "name: x\ndataset:\n  path: a\n   bad: 1\n");
  ASSERT_EQ(r.errors.size(), 1u) << All(r.errors);
  EXPECT_EQ(r.errors[0].file, dir_.File("bad2.yaml"));
  EXPECT_EQ(r.errors[0].line, 4);

  r = Load("dup.yaml", std::string(kMinimal) + "name: again\n");
  EXPECT_TRUE(Has(r.errors, dir_.File("dup.yaml"), 19, "name", "duplicate key (first on line 1)")) << All(r.errors);

  r = Load("list.yaml", "- a\n- b\n");
  EXPECT_TRUE(Has(r.errors, dir_.File("list.yaml"), 1, "", "the top level must be a map")) << All(r.errors);

  r = LoadPipeline(dir_.File("absent.yaml"));
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].file, dir_.File("absent.yaml"));
  EXPECT_NE(r.errors[0].message.find("cannot read"), std::string::npos);
}

TEST_F(LoaderTest, ValidationCollectsEveryErrorWithFileLineAndKey) {
  const std::string path = dir_.File("broken.yaml");
  LoadResult r = Load("broken.yaml", R"(name: broken
dataset:
  path: nowhere.jsonl
runn:
  trials: 2
run:
  max_concurrent_tasks: 0
  trials: many
models:
  m:
    endpoints: [sim]
    model: tiny
    timeout_s: -1
roles:
  ask:
    type: llm
    model: mm
    concurency: 5
    prompt: |
      Question: {{ input.q }}
      {% if input.hint %}
      Hint: {{ input.hint }
  judge:
    type: judge
  pick:
    type: extract
    regex: "answer is ([A-J]"
    var: pick
  gate:
    type: filter
    condition: "len(input.q) >"
    regex: "x"
flow:
  start: begin
  steps:
    ask:
      role: ask
      nxt: done
    pick:
      role: pick
      next:
        - if: "vars.pick == 'A'"
          goto: nowhere
        - goto: done
    lonely:
      role: ghost
      next: join
)");
  EXPECT_FALSE(r.pipeline.has_value());
  const std::string all = All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 3, "dataset.path", "does not exist")) << all;
  EXPECT_TRUE(Has(r.errors, path, 4, "runn", "unknown top-level key (did you mean 'run'?)")) << all;
  EXPECT_TRUE(Has(r.errors, path, 7, "run.max_concurrent_tasks", "must be a positive integer, got 0")) << all;
  EXPECT_TRUE(Has(r.errors, path, 8, "run.trials", "expected an integer, got a string 'many'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 13, "models.m.timeout_s", "must be a positive number")) << all;
  EXPECT_TRUE(Has(r.errors, path, 17, "roles.ask.model", "unknown model 'mm' (did you mean 'm'?)")) << all;
  EXPECT_TRUE(Has(r.errors, path, 18, "roles.ask.concurency", "unknown role key (did you mean 'concurrency'?)")) << all;
  EXPECT_TRUE(Has(r.errors, path, 22, "roles.ask.prompt", "template line 3: '{{' is never closed")) << all;
  EXPECT_TRUE(Has(r.errors, path, 24, "roles.judge.type", "unknown role type 'judge'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 27, "roles.pick.regex", "invalid regex")) << all;
  EXPECT_TRUE(Has(r.errors, path, 31, "roles.gate.condition", "invalid expression 'len(input.q) >': position 15"))
      << all;
  EXPECT_TRUE(Has(r.errors, path, 32, "roles.gate.regex", "does not apply to roles of type filter")) << all;
  EXPECT_TRUE(Has(r.errors, path, 34, "flow.start", "unknown step 'begin'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 38, "flow.steps.ask.nxt", "unknown step key (did you mean 'next'?)")) << all;
  EXPECT_TRUE(Has(r.errors, path, 43, "flow.steps.pick.next", "unknown step 'nowhere'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 46, "flow.steps.lonely.role", "unknown role 'ghost'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 47, "flow.steps.lonely.next", "not part of any branch")) << all;
  EXPECT_EQ(r.errors.size(), 17u) << all;

  auto joined = LoadPipelineOrError(path);
  ASSERT_FALSE(joined.ok());
  EXPECT_EQ(joined.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(joined.status().message().find(path + ":24: roles.judge.type: unknown role type 'judge'"),
            std::string::npos)
      << joined.status().message();
}

TEST_F(LoaderTest, MoreValidation) {
  const std::string path = dir_.File("p.yaml");
  LoadResult r = Load("p.yaml", R"(dataset:
  limit: -1
models:
  m:
    endpoints: [ftp://x, sim]
    model: ""
roles:
  ask:
    type: llm
    model: m
    concurrency: -5
  ex:
    type: extract
    var: x
  cmp:
    type: compare
    left: vars.a
  run_it:
    type: exec
    command: []
flow:
  steps:
    done:
      role: ask
    ask:
      role: ask
      next: 7
    fan:
      fanout: {count: 2}
      role: ask
)");
  const std::string all = All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 1, "dataset.path", "missing required key 'path'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 2, "dataset.limit", "must be zero or a positive integer")) << all;
  EXPECT_TRUE(Has(r.errors, path, 5, "models.m.endpoints", "'ftp://x' is not an http:// or https:// URL")) << all;
  EXPECT_TRUE(Has(r.errors, path, 5, "models.m.endpoints", "'sim' cannot be mixed")) << all;
  EXPECT_TRUE(Has(r.errors, path, 6, "models.m.model", "must not be empty")) << all;
  EXPECT_TRUE(Has(r.errors, path, 11, "roles.ask.concurrency", "must be a positive integer, got -5")) << all;
  EXPECT_TRUE(Has(r.errors, path, 12, "roles.ex", "needs regex")) << all;
  EXPECT_TRUE(Has(r.errors, path, 15, "roles.cmp.right", "missing required key 'right'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 15, "roles.cmp.var", "missing required key 'var'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 20, "roles.run_it.command", "must name a program")) << all;
  EXPECT_TRUE(Has(r.errors, path, 21, "flow.start", "missing required key 'start'")) << all;
  EXPECT_TRUE(Has(r.errors, path, 23, "flow.steps.done", "reserved target name")) << all;
  EXPECT_TRUE(Has(r.errors, path, 27, "flow.steps.ask.next", "expected a step name or a list of rules")) << all;
  EXPECT_TRUE(Has(r.errors, path, 29, "flow.steps.fan.fanout", "count and branch go together")) << all;
  EXPECT_TRUE(Has(r.errors, path, 30, "flow.steps.fan.role", "a fan-out step runs no role")) << all;
}

TEST_F(LoaderTest, ToolExecMessageAndEnvironmentRewardRoles) {
  Write(dir_, "env.py", "print()\n");
  std::string text = kMinimal;
  text.replace(text.find("    prompt: \"{{ input.q }}\"\n"), 0, "");
  text.insert(text.find("flow:"), R"(    tools_from: env
    tool_choice: lookup
  env:
    type: tool
    command: [/usr/bin/python3, ./env.py]
    memory_mb: 256
    max_sessions: 10
  hello:
    type: message
    as: ask
    content: "Hi {{ input.q }}"
  score:
    type: reward
    env: env
    agent: ask
    termination: "'user_stop'"
  run_it:
    type: exec
    command: [/bin/cat]
    sandbox: none
    var: out
)");
  text.replace(text.find("      next: done\n"), std::string("      next: done\n").size(),
               "      next: tools\n    tools:\n      role: env\n      next: hi\n    hi:\n      role: hello\n"
               "      next: score\n    score:\n      role: score\n      next: run\n    run:\n      role: run_it\n");
  LoadResult r = Load("p.yaml", text);
  ASSERT_TRUE(r.pipeline) << All(r.errors);
  const Pipeline& p = *r.pipeline;
  EXPECT_EQ(p.Role("ask")->tools_from, "env");
  EXPECT_EQ(p.Role("ask")->tool_choice, "lookup");
  const RoleConfig& env = *p.Role("env");
  EXPECT_EQ(env.type, RoleType::kTool);
  EXPECT_EQ(env.command[1], dir_.File("env.py"));  // relative to the file
  EXPECT_EQ(env.sandbox, "bwrap");
  EXPECT_EQ(env.memory_mb, 256);
  EXPECT_EQ(env.max_sessions, 10);
  EXPECT_EQ(p.Role("hello")->as, "ask");
  EXPECT_EQ(p.Role("score")->env, "env");
  EXPECT_FALSE(p.Role("score")->expr);
  EXPECT_EQ(p.Role("run_it")->var, "out");
  EXPECT_TRUE(Has(r.warnings, dir_.File("p.yaml"), 32, "roles.run_it.sandbox", "plain process")) << All(r.warnings);

  // References must name roles of the right type.
  std::string bad = text;
  bad.replace(bad.find("tools_from: env"), std::string("tools_from: env").size(), "tools_from: hello");
  bad.replace(bad.find("    agent: ask"), std::string("    agent: ask").size(), "    agent: env");
  bad.replace(bad.find("sandbox: none"), std::string("sandbox: none").size(), "sandbox: docker");
  LoadResult e = Load("bad.yaml", bad);
  const std::string path = dir_.File("bad.yaml");
  EXPECT_TRUE(Has(e.errors, path, 13, "roles.ask.tools_from", "'hello' is not a role of type tool")) << All(e.errors);
  EXPECT_TRUE(Has(e.errors, path, 27, "roles.score.agent", "'env' is not a role of type llm")) << All(e.errors);
  EXPECT_TRUE(Has(e.errors, path, 32, "roles.run_it.sandbox", "unknown sandbox 'docker'")) << All(e.errors);
}

TEST_F(LoaderTest, WarningsForUnreachableAndUnused) {
  const std::string path = dir_.File("p.yaml");
  std::string text = kMinimal;
  text.insert(text.find("flow:"), "  spare:\n    type: noop\n");
  text += "    orphan:\n      role: ask\n      next:\n        - goto: done\n        - if: \"true\"\n          goto: ask\n";
  LoadResult r = Load("p.yaml", text);
  ASSERT_TRUE(r.pipeline.has_value()) << All(r.errors);
  const std::string all = All(r.warnings);
  EXPECT_TRUE(Has(r.warnings, path, 21, "flow.steps.orphan", "never reached from start 'ask'")) << all;
  EXPECT_TRUE(Has(r.warnings, path, 25, "flow.steps.orphan.next[1]", "never used")) << all;
  EXPECT_TRUE(Has(r.warnings, path, 13, "roles.spare", "not used by any step")) << all;
  EXPECT_TRUE(r.warnings[0].warning);
  EXPECT_NE(r.warnings[0].ToString().find(": warning: "), std::string::npos);
}

TEST_F(LoaderTest, YamlAnchorsMergeKeysAndScalarTypes) {
  std::string text = kMinimal;
  text.insert(text.find("flow:"), R"(  base: &base
    type: noop
    concurrency: 5
  derived:
    <<: *base
    concurrency: 9
)");
  text += R"(    more:
      role: base
      next: again
    again:
      role: derived
params:
  quoted: "123"
  tagged: !!str 456
  int_tag: !!int "7"
  hex: 0x1F
  float: 1.5e2
  nothing: ~
  yes_word: yes
)";
  text.replace(text.find("      next: done\n"), 17, "      next: more\n");
  Pipeline p = LoadOk(text);
  EXPECT_EQ(p.Role("base")->concurrency, 5);
  EXPECT_EQ(p.Role("derived")->concurrency, 9);
  EXPECT_EQ(p.Role("derived")->type, RoleType::kNoop);
  const Json& params = p.merged["params"];
  EXPECT_EQ(params["quoted"], "123");
  EXPECT_EQ(params["tagged"], "456");
  EXPECT_EQ(params["int_tag"], 7);
  EXPECT_EQ(params["hex"], 31);
  EXPECT_EQ(params["float"], 150.0);
  EXPECT_TRUE(params["nothing"].is_null());
  EXPECT_EQ(params["yes_word"], "yes");
}

TEST_F(LoaderTest, HashCoversTheDefinitionOnly) {
  Pipeline a = LoadOk(kMinimal);
  Pipeline b = LoadOk(kMinimal, {"run.max_concurrent_tasks=5", "dataset.limit=3"});
  Pipeline c = LoadOk(kMinimal, {"roles.ask.prompt=Question {{ input.q }}"});
  EXPECT_EQ(a.hash, b.hash);
  EXPECT_NE(a.hash, c.hash);
}

TEST_F(LoaderTest, ModelPriceIsOptionalAndDefaultsToUsd) {
  Pipeline none = LoadOk(kMinimal);
  EXPECT_FALSE(none.Model("m")->price.has_value());

  std::string text = kMinimal;
  text.replace(text.find("    model: tiny\n"), 16,
               "    model: tiny\n    price: {input_per_million: 0.15, output_per_million: 0.6}\n");
  Pipeline p = LoadOk(text);
  ASSERT_TRUE(p.Model("m")->price.has_value());
  EXPECT_DOUBLE_EQ(p.Model("m")->price->input_per_million, 0.15);
  EXPECT_DOUBLE_EQ(p.Model("m")->price->output_per_million, 0.6);
  EXPECT_EQ(p.Model("m")->price->currency, "USD");
  EXPECT_NE(DescribePipeline(p).find("0.15 / 0.6 USD per million prompt / completion tokens"), std::string::npos)
      << DescribePipeline(p);
  // A price changes what is reported, not what tasks do.
  EXPECT_EQ(p.hash, none.hash);

  // From the command line, onto a model without a price; integers and zero are prices too.
  Pipeline o = LoadOk(kMinimal, {"models.m.price.input_per_million=1", "models.m.price.output_per_million=0",
                                 "models.m.price.currency=EUR"});
  ASSERT_TRUE(o.Model("m")->price.has_value());
  EXPECT_DOUBLE_EQ(o.Model("m")->price->input_per_million, 1.0);
  EXPECT_DOUBLE_EQ(o.Model("m")->price->output_per_million, 0.0);
  EXPECT_EQ(o.Model("m")->price->currency, "EUR");
  EXPECT_EQ(o.hash, none.hash);
}

TEST_F(LoaderTest, ModelPriceErrorsNameFileLineAndKey) {
  const std::string path = Write(dir_, "price.yaml", R"(name: priced
dataset:
  path: data.jsonl
models:
  a:
    endpoints: [sim]
    model: tiny
    price:
      input_per_million: -0.5
      output_per_million: cheap
      curency: USD
  b:
    endpoints: [sim]
    model: tiny
    price: {input_per_million: 1}
  c:
    endpoints: [sim]
    model: tiny
    price: 3
  d:
    endpoints: [sim]
    model: tiny
    price: {input_per_million: 1, output_per_million: 2, currency: ""}
roles:
  ask: {type: llm, model: a, prompt: "{{ input.q }}"}
  ask_b: {type: llm, model: b, prompt: "{{ input.q }}"}
  ask_c: {type: llm, model: c, prompt: "{{ input.q }}"}
  ask_d: {type: llm, model: d, prompt: "{{ input.q }}"}
flow:
  start: ask
  steps:
    ask: {role: ask, next: b}
    b: {role: ask_b, next: c}
    c: {role: ask_c, next: d}
    d: {role: ask_d, next: done}
)");
  LoadResult r = LoadPipeline(path, {});
  const std::string all = All(r.errors);
  EXPECT_FALSE(r.pipeline.has_value());
  EXPECT_TRUE(Has(r.errors, path, 9, "models.a.price.input_per_million", "must be a non-negative number, got -0.5"))
      << all;
  EXPECT_TRUE(Has(r.errors, path, 10, "models.a.price.output_per_million", "expected a number, got a string 'cheap'"))
      << all;
  EXPECT_TRUE(Has(r.errors, path, 11, "models.a.price.curency", "unknown price key (did you mean 'currency'?)"))
      << all;
  EXPECT_TRUE(Has(r.errors, path, 15, "models.b.price.output_per_million", "missing required key")) << all;
  EXPECT_TRUE(Has(r.errors, path, 19, "models.c.price", "expected a map")) << all;
  EXPECT_TRUE(Has(r.errors, path, 23, "models.d.price.currency", "must not be empty")) << all;

  // Overrides: a price that is not a number, and a misspelt price key.
  LoadResult o =
      Load("p.yaml", kMinimal, {"models.m.price.input_per_million=abc", "models.m.price.output_per_million=1"});
  EXPECT_TRUE(Has(o.errors, "<command line>", 0, "models.m.price.input_per_million", "expected a number"))
      << All(o.errors);
  LoadResult typo = Load("p.yaml", kMinimal, {"models.m.price.input_per_milion=1"});
  EXPECT_TRUE(Has(typo.errors, "<command line>", 0, "models.m.price.input_per_milion",
                  "unknown key (did you mean 'input_per_million'?)"))
      << All(typo.errors);
}

TEST_F(LoaderTest, PricedModelsShareOneCurrency) {
  std::string text = kMinimal;
  text.replace(text.find("roles:"), 6, R"(  n:
    endpoints: [sim]
    model: tiny
    price: {input_per_million: 1, output_per_million: 2, currency: EUR}
roles:
  other: {type: llm, model: n, prompt: "{{ input.q }}"})");
  LoadResult r = Load("p.yaml", text, {"models.m.price.input_per_million=1", "models.m.price.output_per_million=2"});
  EXPECT_TRUE(Has(r.errors, dir_.File("p.yaml"), 11, "models.n.price.currency",
                  "'EUR' differs from models.m's 'USD'; every priced model needs the same currency"))
      << All(r.errors);
  EXPECT_FALSE(r.pipeline.has_value());
}

TEST(ConfigErrorTest, ToString) {
  EXPECT_EQ((ConfigError{"a.yaml", 3, "roles.x", "bad", false}).ToString(), "a.yaml:3: roles.x: bad");
  EXPECT_EQ((ConfigError{"a.yaml", 0, "", "bad", false}).ToString(), "a.yaml: bad");
  EXPECT_EQ((ConfigError{"a.yaml", 2, "k", "odd", true}).ToString(), "a.yaml:2: k: warning: odd");
}

TEST_F(LoaderTest, ResponseFormatSchemasAreCheckedWhenLoading) {
  const std::string path = Write(dir_, "rf.yaml", R"yaml(dataset: {path: data.jsonl}
models: {m: {endpoints: [sim], model: x, logprobs: true, top_logprobs: 3}}
roles:
  good:
    type: llm
    model: m
    response_format:
      type: json_schema
      schema: {type: object, properties: {score: {type: integer}}, required: [score]}
  bad:
    type: llm
    model: m
    response_format:
      type: json_schema
      json_schema:
        name: verdict
        schema: {type: object, properties: {score: {type: numbr}}}
  odd:
    type: llm
    model: m
    response_format: {type: xml}
flow:
  start: good
  steps:
    good: {role: good, next: bad}
    bad: {role: bad, next: odd}
    odd: {role: odd}
)yaml");
  LoadResult r = LoadPipeline(path);
  EXPECT_FALSE(r.pipeline);
  const std::string all = All(r.errors);
  EXPECT_TRUE(Has(r.errors, path, 17, "roles.bad.response_format.json_schema.schema", "not a valid JSON Schema")) << all;
  EXPECT_TRUE(Has(r.errors, path, 21, "roles.odd.response_format.type", "json_object or json_schema")) << all;
  EXPECT_EQ(r.errors.size(), 2u) << all;

  LoadOptions parse_only;
  parse_only.parse_only = true;
  auto fixed = LoadPipeline(path, {"roles.bad.response_format.json_schema.schema.properties.score.type=number",
                                   "roles.odd.response_format.type=json_object"});
  ASSERT_TRUE(fixed.pipeline) << All(fixed.errors);
  const RoleConfig& good = *fixed.pipeline->Role("good");
  ASSERT_TRUE(good.response_schema);
  EXPECT_EQ(good.response_format["json_schema"]["name"], "good");
  EXPECT_EQ(good.response_format["json_schema"]["strict"], true);
  EXPECT_TRUE(good.response_schema->Validate(Json::parse(R"({"score": 3})")).ok());
  EXPECT_FALSE(good.response_schema->Validate(Json::parse(R"({"score": "3"})")).ok());
  EXPECT_EQ(fixed.pipeline->Role("odd")->response_format["type"], "json_object");
  EXPECT_FALSE(fixed.pipeline->Role("odd")->response_schema);
  EXPECT_TRUE(fixed.pipeline->Model("m")->logprobs);
  EXPECT_EQ(fixed.pipeline->Model("m")->top_logprobs, 3);
}

TEST_F(LoaderTest, OutputCompressionIsNoneOrZstd) {
  EXPECT_EQ(LoadOk(kMinimal).run.output_compression, RunConfig::OutputCompression::kNone);
  EXPECT_EQ(LoadOk(kMinimal, {"run.output_compression=zstd"}).run.output_compression,
            RunConfig::OutputCompression::kZstd);
  const std::string path = dir_.File("p.yaml");
  LoadResult r = Load("p.yaml", std::string(kMinimal) + "run:\n  output_compression: gzip\n");
  EXPECT_FALSE(r.pipeline.has_value());
  EXPECT_TRUE(Has(r.errors, path, 20, "run.output_compression", "must be 'none' or 'zstd', not 'gzip'"))
      << All(r.errors);
}

}  // namespace
}  // namespace matrix::config
