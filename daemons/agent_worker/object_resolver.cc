// Stored content of a task: fetches what a step reads (archived segments
// first, then the content they reference), offloads large content before a
// hop, archives old history into segments, frees what a finished task held.

#include "daemons/agent_worker/worker_impl.h"

#include <cstring>
#include <unordered_set>

#include "common/base/log.h"
#include "common/base/zstd_lines.h"

namespace matrix::worker {

using config::RoleType;

void Worker::Impl::PrependArchive(const TaskRun& run, bool with_spans, wire::Task* task) {
  if (!run.archived_turns.empty())
    task->history.insert(task->history.begin(), run.archived_turns.begin(), run.archived_turns.end());
  if (with_spans && !run.archived_spans.empty())
    task->spans.insert(task->spans.begin(), run.archived_spans.begin(), run.archived_spans.end());
  if (run.archive_loaded && !run.segments.empty()) task->archive = run.segments;  // every segment, to free
}

wire::Task Worker::Impl::Expanded(const TaskRun& run) {
  wire::Task full = run.task;
  PrependArchive(run, /*with_spans=*/true, &full);
  return full;
}

wire::Task Worker::Impl::HistoryView(TaskRun& run) {
  // The spans are set aside while the task is copied: nothing a step reads.
  std::vector<wire::Span> spans = std::move(run.task.spans);
  wire::Task view = run.task;
  run.task.spans = std::move(spans);
  PrependArchive(run, /*with_spans=*/false, &view);
  return view;
}

void Worker::Impl::LoadArchive(uint64_t id, std::vector<wire::ObjectRef> wanted,
                               std::function<void(uint64_t, const Status&)> then) {
  // The task carries its newest segment; each segment lists every older one
  // (oldest first), so two rounds read any history, and a segment archived
  // where its predecessors were not loaded adds a round per such link. A
  // segment is asked for once and a missing one fails the Get: the rounds
  // end. Segments with turns that this worker archived or read lately come
  // decoded from segment_cache_; the others from the store.
  while (!wanted.empty()) {
    TaskRun& r = runs_[id];
    std::vector<wire::ObjectRef> fetch;
    for (const auto& ref : wanted) {
      if (const wire::Task* cached = segment_cache_.Find(ref.id)) {
        r.loading_segments.emplace(ref.id, std::make_pair(ref, *cached));
      } else {
        fetch.push_back(ref);
      }
    }
    if (!fetch.empty()) {
      store_->Get(fetch, [this, id, wanted, fetch, then](StatusOr<std::vector<std::string>> got) {
        auto it = runs_.find(id);
        if (it == runs_.end()) return;
        TaskRun& r = it->second;
        auto give_up = [&](const Status& st) {
          r.archive_loaded = true;  // a record is still written, without what is missing
          r.loading_segments.clear();
          then(id, st);
        };
        if (!got.ok()) return give_up(got.status());
        for (size_t i = 0; i < fetch.size() && i < got->size(); ++i) {
          std::string inflated;
          Status unpacked = InflateSegment((*got)[i], &inflated);
          if (!unpacked.ok()) return give_up(unpacked);
          const std::string& encoded = inflated.empty() ? (*got)[i] : inflated;
          auto segment = wire::DecodeTask(encoded, config_.max_message_bytes);
          if (!segment.ok()) return give_up(DataLoss("archived segment: " + segment.status().message()));
          if (!segment->history.empty()) segment_cache_.Put(fetch[i].id, *segment);
          r.loading_segments.emplace(fetch[i].id, std::make_pair(fetch[i], std::move(*segment)));
        }
        LoadArchive(id, OlderSegments(r, wanted), then);  // none left: placed at once
      });
      return;
    }
    wanted = OlderSegments(r, wanted);
  }
  PlaceArchive(id, then);
}

std::vector<wire::ObjectRef> Worker::Impl::OlderSegments(const TaskRun& r, const std::vector<wire::ObjectRef>& read) {
  std::vector<wire::ObjectRef> more;  // listed and not read yet
  std::unordered_set<uint64_t> asked;
  for (const auto& ref : read) {
    auto seg = r.loading_segments.find(ref.id);
    if (seg == r.loading_segments.end()) continue;
    for (const auto& older : seg->second.second.archive)
      if (!r.loading_segments.count(older.id) && asked.insert(older.id).second) more.push_back(older);
  }
  return more;
}

void Worker::Impl::PlaceArchive(uint64_t id, const std::function<void(uint64_t, const Status&)>& then) {
  TaskRun& r = runs_[id];
  // Oldest first: a segment's turns follow those of every segment it lists.
  // Depth first, iteratively: a linked chain may be thousands long.
  std::unordered_set<uint64_t> placed;
  std::vector<std::pair<uint64_t, bool>> stack;  // (segment id, its older ones already pushed)
  for (auto head = r.task.archive.rbegin(); head != r.task.archive.rend(); ++head) stack.push_back({head->id, false});
  while (!stack.empty()) {
    auto [seg_id, expanded] = stack.back();
    stack.pop_back();
    auto seg = r.loading_segments.find(seg_id);
    if (seg == r.loading_segments.end()) continue;
    wire::Task& segment = seg->second.second;
    if (!expanded) {
      if (!placed.insert(seg_id).second) continue;
      stack.push_back({seg_id, true});
      for (auto older = segment.archive.rbegin(); older != segment.archive.rend(); ++older)
        if (!placed.count(older->id)) stack.push_back({older->id, false});
      continue;
    }
    for (auto& t : segment.history) r.archived_turns.push_back(std::move(t));
    for (auto& sp : segment.spans) r.archived_spans.push_back(std::move(sp));
    r.segments.push_back(seg->second.first);
  }
  r.loading_segments.clear();
  r.archive_loaded = true;
  then(id, Status::Ok());
}

void Worker::Impl::Fetch(uint64_t id, std::function<void(uint64_t)> then, bool whole) {
  TaskRun& run = runs_[id];
  // True when the task goes on (a record is still written, with unresolved
  // content marked in it); false when it ended here (the run may be gone).
  auto fail = [this](uint64_t rid, const Status& st) {
    auto it = runs_.find(rid);
    if (it == runs_.end()) return false;
    if (!it->second.sink) {
      FailTask(rid, wire::TaskStatus::kLost, "object_unavailable", st.ToString());
      return false;
    }
    LOG_WARN << "task " << it->second.task.task_id << ": " << st.ToString();
    return true;
  };
  if (whole && !run.archive_loaded && !run.task.archive.empty()) {
    // First the archived segments, then (second pass) the content they reference.
    LoadArchive(id, run.task.archive, [this, then, fail](uint64_t rid, const Status& st) {
      if (!st.ok() && !fail(rid, st)) return;
      Fetch(rid, then);
    });
    return;
  }
  std::vector<wire::ObjectRef> refs;
  for (auto& ref : CollectRefs(run.task))
    if (!run.resolved.count(ref.id)) refs.push_back(ref);
  for (const auto& turn : run.archived_turns)
    if (turn.content.ref && !run.resolved.count(turn.content.ref->id)) refs.push_back(*turn.content.ref);
  if (refs.empty()) return then(id);
  store_->Get(refs, [this, id, refs, then, fail](StatusOr<std::vector<std::string>> got) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    if (got.ok()) {
      for (size_t i = 0; i < refs.size() && i < got->size(); ++i)
        it->second.resolved[refs[i].id] = std::move((*got)[i]);
    } else if (!fail(id, got.status())) {
      return;
    }
    then(id);
  });
}

void Worker::Impl::OffloadAndSubmit(uint64_t id) {
  TaskRun& run = runs_[id];
  EndStepCount(run);
  size_t threshold = pipeline_->run.offload_threshold_bytes;
  auto offload = [&](wire::Content* content, auto locate) {
    if (content->ref || content->text.size() <= threshold) return;
    run.pending_puts++;
    ++offloaded_;
    std::string text = content->text;
    const double bytes = static_cast<double>(text.size());
    store_->Put(std::move(text), [this, id, locate, bytes](StatusOr<wire::ObjectRef> ref) {
      auto it = runs_.find(id);
      if (it == runs_.end()) return;
      TaskRun& r = it->second;
      if (ref.ok()) {
        metrics_.offloaded_bytes.Inc(bytes);
        wire::Content* c = locate(r.task);
        r.resolved[ref->id] = std::move(c->text);
        c->text.clear();
        c->ref = *ref;
      }  // on failure the content simply stays inline
      if (--r.pending_puts == 0) ArchiveAndSubmit(id);
    });
  };
  offload(&run.task.input, [](wire::Task& t) { return &t.input; });
  for (size_t i = 0; i < run.task.history.size(); ++i)
    offload(&run.task.history[i].content, [i](wire::Task& t) { return &t.history[i].content; });
  if (run.pending_puts == 0) ArchiveAndSubmit(id);
}

void Worker::Impl::ArchiveAndSubmit(uint64_t id) {
  // Keeps the message small: beyond kMaxInlineTurns turns or kMaxInlineSpans
  // spans, everything but the last kKeepTurns turns, and every span, moves
  // into a segment. The task then carries only its newest segment, which
  // lists every older one, so a conversation's hop carries at most one turn,
  // its spans and one reference, at 2 turns as at 2,000 (bench/run bytes).
  // (Two turns inline would halve the segments, about 13 % of the CPU of an
  // LLM call, but a hop of a long conversation would then carry a fourth
  // more bytes than one of a short conversation.)
  // Spans alone (steps that add no turn) wait for kMaxInlineSpans, so a
  // no-op hop rarely pays for a segment. The newest turn stays with the task,
  // so a step that reads only `last_turn` (or `last`, when it is that turn)
  // loads nothing; steps that read the history load it from the store
  // (usually this worker's cache) in two or three rounds.
  constexpr size_t kMaxInlineTurns = 1, kKeepTurns = 1, kMaxInlineSpans = 12;
  TaskRun& run = runs_[id];
  wire::Task& task = run.task;
  // An ending task is expanded by its owner: nothing to archive.
  const bool ending = run.next_role.rfind("sink:", 0) == 0 || task.status != wire::TaskStatus::kRunning;
  if (ending || (task.history.size() <= kMaxInlineTurns && task.spans.size() <= kMaxInlineSpans))
    return SubmitRun(id);
  size_t turns = task.history.size() > kKeepTurns ? task.history.size() - kKeepTurns : 0;
  size_t spans = task.spans.size();
  wire::Task segment;
  segment.task_id = task.task_id;
  segment.history.assign(task.history.begin(), task.history.begin() + static_cast<long>(turns));
  segment.spans = task.spans;
  // Every older segment, oldest first, when this step loaded them (steps that
  // read the history do); otherwise the previous newest one, a link that
  // LoadArchive() follows one round further.
  segment.archive = run.archive_loaded ? run.segments : task.archive;
  ++archived_segments_;
  // Segments stay in the store for the task's lifetime: compressed (spans and
  // turns of one task repeat their names), they take a fraction of the memory.
  std::string encoded = wire::EncodeTask(segment), frame;
  if (!segment_zstd_.Compress(encoded, &frame).ok() || frame.size() >= encoded.size()) frame = std::move(encoded);
  // Kept decoded for the task's next step, when it holds turns (steps read
  // turns; spans only the record, once).
  auto decoded = turns > 0 ? std::make_shared<wire::Task>(std::move(segment)) : nullptr;
  store_->Put(std::move(frame), [this, id, turns, spans, decoded](StatusOr<wire::ObjectRef> ref) {
    if (ref.ok() && decoded) segment_cache_.Put(ref->id, std::move(*decoded));
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    TaskRun& r = it->second;
    if (ref.ok()) {
      if (r.archive_loaded || r.task.archive.empty()) {
        r.archived_turns.insert(r.archived_turns.end(), r.task.history.begin(),
                                r.task.history.begin() + static_cast<long>(turns));
        r.archived_spans.insert(r.archived_spans.end(), r.task.spans.begin(),
                                r.task.spans.begin() + static_cast<long>(spans));
        r.segments.push_back(*ref);
        r.archive_loaded = true;
      }
      r.task.history.erase(r.task.history.begin(), r.task.history.begin() + static_cast<long>(turns));
      r.task.spans.erase(r.task.spans.begin(), r.task.spans.begin() + static_cast<long>(spans));
      r.task.archive.assign(1, *ref);
    }  // on failure the segment simply stays inline
    SubmitRun(id);
  });
}

Status Worker::Impl::InflateSegment(const std::string& stored, std::string* out) {
  // A zstd frame starts 28 b5 2f fd; an encoded task starts with its root
  // offset, never that large.
  static constexpr unsigned char kMagic[4] = {0x28, 0xb5, 0x2f, 0xfd};
  out->clear();
  if (stored.size() < 4 || std::memcmp(stored.data(), kMagic, 4) != 0) return Status::Ok();
  size_t whole = 0;
  Status st = ForEachZstdFrame(
      stored,
      [&](std::string_view content, size_t) {
        if (out->size() + content.size() > config_.max_message_bytes)
          return DataLoss("archived segment inflates past max_message_bytes");
        out->append(content);
        return Status::Ok();
      },
      &whole);
  if (st.ok() && whole != stored.size()) st = DataLoss("archived segment: a torn zstd frame");
  if (!st.ok()) return DataLoss("archived segment: " + st.message());
  return Status::Ok();
}

void Worker::Impl::FreeRefs(const wire::Task& task) {
  auto refs = CollectRefs(task);
  refs.insert(refs.end(), task.archive.begin(), task.archive.end());
  for (const auto& ref : task.archive) segment_cache_.Erase(ref.id);
  if (!refs.empty()) store_->Free(std::move(refs));
}

}  // namespace matrix::worker
