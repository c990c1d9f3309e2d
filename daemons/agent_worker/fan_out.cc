// Fan-out steps, run by the task's owner. A task that reaches a fan-out step
// goes to its owner's sink queue still running; the owner starts its branches
// (tasks of their own, on any worker) and keeps the parent until they report:
// every branch ends at its owner too (at `join`, done, failed, filtered or
// lost). Once all have ended, the first k ended well or the deadline passed,
// the branches' outcomes go into the parent (vars.branches, the combined
// value, their turns) and it runs the join step or the fan-out's `next`.
//
// The waiting parent lives in the owner's memory, like its admission: if the
// owner dies, its successor admits the task again from its row, and branches
// of the old attempt are dropped when they report.

#include <algorithm>

#include "common/base/hash.h"
#include "common/base/log.h"
#include "daemons/agent_worker/worker_impl.h"

namespace matrix::worker {

using config::FanoutConfig;

namespace {

int64_t TurnTokens(const std::vector<wire::Turn>& turns) {
  int64_t n = 0;
  for (const auto& t : turns) n += t.prompt_tokens + t.completion_tokens;
  return n;
}

// `text` of `turn.extra` (a JSON object or empty) with `fields` added.
std::string ExtraWith(const std::string& text, const Json& fields) {
  Json extra = text.empty() ? Json::object() : Json::parse(text, nullptr, false);
  if (!extra.is_object()) extra = Json::object();
  for (const auto& [k, v] : fields.items()) extra[k] = v;
  return DumpJson(extra);
}

}  // namespace

int64_t Worker::Impl::TokenLimit(const wire::Task& task) const {
  auto share = task.counters.find("token_budget");
  if (share != task.counters.end()) return share->second;
  return pipeline_->flow.max_tokens;
}

bool Worker::Impl::OverBudget(uint64_t id) {
  TaskRun& run = runs_[id];
  const int64_t limit = TokenLimit(run.task);
  if (limit <= 0) return false;
  auto used = run.task.counters.find("tokens");
  if (used == run.task.counters.end() || used->second <= limit) return false;
  FailTask(id, wire::TaskStatus::kFailed, "token_budget",
           "used " + std::to_string(used->second) + " prompt + completion tokens, over " +
               (run.task.branch ? "this branch's share of flow.max_tokens (" : "flow.max_tokens (") +
               std::to_string(limit) + ")");
  return true;
}

const config::StepConfig* Worker::Impl::FanoutOfJoin(const config::StepConfig* step) const {
  auto it = join_of_.find(step);
  return it == join_of_.end() ? nullptr : it->second;
}

std::string Worker::Impl::QueueOf(const config::StepConfig& step, const wire::Task& task) const {
  // Fan-out steps are run by the task's owner, reached through its sink queue.
  return step.fanout ? "sink:" + task.owner : QueueFor(step, task);
}

void Worker::Impl::StartFanout(uint64_t id) {
  // The branches copy the parent's input as text: fetch it first.
  Fetch(id, [this](uint64_t rid) {
    TaskRun& run = runs_[rid];
    wire::Task& parent = run.task;
    const config::StepConfig* step = pipeline_->Step(parent.step);
    if (!step || !step->fanout) {
      return FailTask(rid, wire::TaskStatus::kFailed, "unknown_step",
                      "step '" + parent.step + "' is not a fan-out step of the pipeline");
    }
    const FanoutConfig& fan = *step->fanout;
    const std::vector<std::string> starts = fan.BranchStarts();
    const int64_t round = ++parent.counters[step->name];
    const std::string key = parent.task_id + "@" + std::to_string(parent.attempt) + "#" + std::to_string(round);
    const int64_t limit = TokenLimit(parent);
    const int64_t used = parent.counters.count("tokens") ? parent.counters["tokens"] : 0;
    const std::string input = ContentText(parent.input, run.resolved);
    for (size_t i = 0; i < starts.size(); ++i) {
      TaskRun b;
      wire::Task& t = b.task;
      t.run_id = parent.run_id;
      t.task_id = parent.task_id + "/" + step->name + "." + std::to_string(round) + "." + std::to_string(i);
      t.partition = parent.partition;
      t.row = parent.row;
      t.trial = parent.trial;
      t.seed = Hash64(t.task_id, parent.seed);
      t.attempt = parent.attempt;
      t.owner = parent.owner;
      t.pipeline = parent.pipeline;
      t.pipeline_hash = parent.pipeline_hash;
      t.step = starts[i];
      t.counters = parent.counters;
      t.counters.erase("tokens");
      // Equal shares of what is left: together the branches cannot overspend.
      if (limit > 0) t.counters["token_budget"] = std::max<int64_t>(0, limit - used) / static_cast<int64_t>(starts.size());
      t.vars = parent.vars;
      t.vars.erase("branches");
      t.input.text = input;
      t.created_us = clock_->WallMicros();
      t.branch = wire::BranchInfo{parent.task_id, static_cast<uint32_t>(i), static_cast<uint32_t>(starts.size()),
                                  fan.join, key};
      const config::StepConfig* start = pipeline_->Step(starts[i]);
      b.next_role = start ? QueueOf(*start, t) : starts[i];
      OffloadAndSubmit(NewRun(std::move(b)));
    }
    branches_started_ += static_cast<int64_t>(starts.size());
    Join join;
    join.fanout = step;
    join.results.resize(starts.size());
    join.deadline_ns = fan.deadline_s > 0 ? clock_->NowNanos() + static_cast<int64_t>(fan.deadline_s * 1e9) : 0;
    join.parent = std::move(parent);
    Ack(run.lease);
    runs_.erase(rid);
    joins_.emplace(key, std::move(join));
  });
}

void Worker::Impl::OnBranchResult(uint64_t id) {
  Fetch(id, [this](uint64_t rid) {
    TaskRun& run = runs_[rid];
    wire::Task full = Expanded(run);
    auto it = joins_.find(full.branch->join_key);
    const uint32_t index = full.branch->index;
    if (it == joins_.end() || index >= it->second.results.size() || it->second.results[index]) {
      // Its parent has moved on (first k, deadline), was admitted again, or
      // this is a second report of the same branch.
      ++branches_dropped_;
      FreeRefs(full);
      Ack(run.lease);
      runs_.erase(rid);
      return;
    }
    Join& join = it->second;
    const FanoutConfig& fan = *join.fanout->fanout;
    BranchResult res;
    const bool ok = full.status == wire::TaskStatus::kDone;
    Json summary = {{"index", index},
                    {"task_id", full.task_id},
                    {"status", wire::TaskStatusName(full.status)},
                    {"reason", full.reason},
                    {"vars", Json::object()}};
    if (!full.error.empty()) summary["error"] = full.error;
    for (const auto& [k, v] : full.vars) {
      if (join.parent.vars.count(k) && join.parent.vars.at(k) == v) continue;  // inherited, unchanged
      Json value = Json::parse(v, nullptr, false);
      summary["vars"][k] = value.is_discarded() ? Json(v) : value;
    }
    // The context is built only for the expressions that read it.
    const Json ctx = fan.value || fan.score ? BuildContext(full, run.resolved, kCtxAll) : Json();
    if (fan.value) {
      auto v = fan.value->Eval(ctx);
      summary["value"] = v.ok() ? *v : Json(nullptr);
      if (!v.ok()) summary["value_error"] = v.status().message();
    } else {
      summary["value"] = full.history.empty() ? Json(nullptr)
                                              : Json(ContentText(full.history.back().content, run.resolved));
    }
    if (fan.score) {
      auto v = fan.score->Eval(ctx);
      summary["score"] = v.ok() && v->is_number() ? *v : Json(nullptr);
      if (!v.ok()) summary["score_error"] = v.status().message();
    }
    // The branch's turns, text inline: its stored objects are freed now.
    FreeRefs(full);
    for (auto& t : full.history) {
      t.content.text = ContentText(t.content, run.resolved);
      t.content.ref.reset();
      t.conversation = false;
      t.extra = ExtraWith(t.extra, {{"branch", index}, {"fanout", join.fanout->name}});
    }
    summary["tokens"] = TurnTokens(full.history);
    res.ok = ok;
    res.summary = std::move(summary);
    res.turns = std::move(full.history);
    res.spans = std::move(full.spans);
    join.results[index] = std::move(res);
    ++join.ended;
    if (ok) ++join.ended_ok;
    const size_t width = join.results.size();
    const bool enough = fan.first > 0 ? join.ended_ok >= static_cast<size_t>(fan.first) : false;
    const std::string key = it->first;
    Ack(run.lease);
    runs_.erase(rid);
    if (enough || join.ended == width) ResumeJoin(key, enough && join.ended < width ? "first" : "all");
  });
}

void Worker::Impl::CheckJoinDeadlines() {
  const int64_t now = clock_->NowNanos();
  std::vector<std::string> due;
  for (const auto& [key, join] : joins_)
    if (join.deadline_ns > 0 && now >= join.deadline_ns) due.push_back(key);
  for (const auto& key : due) ResumeJoin(key, "deadline");
}

void Worker::Impl::DropJoinsOf(const std::string& task_id) {
  // Its own waits ("<id>@...") and those of its branches' nested fan-outs ("<id>/...").
  for (const char* sep : {"@", "/"}) {
    const std::string prefix = task_id + sep;
    for (auto it = joins_.lower_bound(prefix); it != joins_.end() && it->first.rfind(prefix, 0) == 0;)
      it = joins_.erase(it);
  }
}

void Worker::Impl::ResumeJoin(const std::string& key, const char* why) {
  auto it = joins_.find(key);
  if (it == joins_.end()) return;
  Join join = std::move(it->second);
  joins_.erase(it);
  const config::StepConfig& step = *join.fanout;
  const FanoutConfig& fan = *step.fanout;
  TaskRun run;
  wire::Task& task = run.task;
  task = std::move(join.parent);
  Json branches = Json::array();
  Json kept = Json::array();  // the branches that ended well, for combine
  int64_t tokens = 0;
  for (size_t i = 0; i < join.results.size(); ++i) {
    auto& r = join.results[i];
    if (!r) {
      branches.push_back({{"index", i}, {"status", "pending"}, {"reason", why}});
      continue;
    }
    tokens += r->summary["tokens"].get<int64_t>();
    for (auto& t : r->turns) {
      if (t.kind == "llm") task.counters["llm_calls"]++;
      task.history.push_back(std::move(t));
    }
    for (auto& s : r->spans) task.spans.push_back(std::move(s));
    if (r->ok) kept.push_back(r->summary);
    branches.push_back(std::move(r->summary));
  }
  task.counters["tokens"] += tokens;
  task.counters["branches_ok"] = static_cast<int64_t>(kept.size());
  task.counters["branches_ended"] = static_cast<int64_t>(join.ended);
  SetVar(task, "branches", branches);
  auto text_of = [](const Json& v) { return v.is_string() ? v.get<std::string>() : DumpJson(v); };
  switch (fan.combine) {
    case FanoutConfig::Combine::kNone: break;
    case FanoutConfig::Combine::kConcat: {
      std::string all;
      for (const auto& b : kept) all += (all.empty() ? "" : "\n\n") + text_of(b["value"]);
      SetVar(task, fan.var, all);
      break;
    }
    case FanoutConfig::Combine::kVote: {
      // The most frequent value; ties go to the one seen first.
      std::vector<std::pair<std::string, int>> counts;
      Json winner;
      int best = 0;
      for (const auto& b : kept) {
        if (b["value"].is_null()) continue;
        const std::string k = DumpJson(b["value"]);
        auto c = std::find_if(counts.begin(), counts.end(), [&](const auto& p) { return p.first == k; });
        int n = c == counts.end() ? (counts.push_back({k, 1}), 1) : ++c->second;
        if (n > best) best = n, winner = b["value"];
      }
      SetVar(task, fan.var, winner);
      SetVar(task, fan.var + "_votes", best);
      break;
    }
    case FanoutConfig::Combine::kBest: {
      Json winner;
      int64_t index = -1;
      double top = 0;
      for (const auto& b : kept) {
        if (!b.contains("score") || !b["score"].is_number()) continue;
        double s = b["score"].get<double>();
        if (index < 0 || s > top) top = s, winner = b["value"], index = b["index"].get<int64_t>();
      }
      SetVar(task, fan.var, winner);
      SetVar(task, fan.var + "_index", index);
      break;
    }
  }
  uint64_t id = NewRun(std::move(run));
  if (OverBudget(id)) return;
  if (const config::StepConfig* join_step = pipeline_->Step(fan.join)) {
    runs_[id].task.step = join_step->name;
    runs_[id].next_role = QueueOf(*join_step, runs_[id].task);
    return OffloadAndSubmit(id);
  }
  // No join step: the fan-out's own `next` and `set` apply now, with the
  // stored content fetched first when they read it (as for a delivery).
  runs_[id].step = nullptr;
  if (PartsOf(&step).route & kCtxStored) {
    Fetch(id, [this, &step](uint64_t rid) { RouteAndSubmit(rid, step); });
  } else {
    RouteAndSubmit(id, step);
  }
}

}  // namespace matrix::worker
