// SimEngine: continuous-batching timing model. See sim_engine.h for the model
// and the thread rules (single owner).
#include "daemons/llm_sim/sim_engine.h"

#include <algorithm>
#include <cmath>

namespace matrix::llm_sim {

SimEngine::SimEngine(const SimConfig& config, const Clock* clock)
    : slots_(std::max(1, config.slots)),
      step_ms_(config.step_ms),
      step_ms_per_seq_(config.step_ms_per_seq),
      prefill_tokens_per_s_(config.prefill_tokens_per_s),
      speed_(config.speed),
      clock_(clock) {}

int64_t SimEngine::StepNanos(int64_t batch) const {
  double ms = step_ms_ + step_ms_per_seq_ * static_cast<double>(batch);
  return std::max<int64_t>(1, std::llround(ms * 1e6 / speed_));
}

int64_t SimEngine::PrefillNanos(int64_t prompt_tokens) const {
  return std::llround(static_cast<double>(prompt_tokens) / prefill_tokens_per_s_ * 1e9 / speed_);
}

void SimEngine::Submit(const SeqSpec& spec) {
  const int64_t now = clock_->NowNanos();
  Seq seq;
  seq.spec = spec;
  seq.spec.output_tokens = std::max<int64_t>(1, spec.output_tokens);
  if (spec.extra_delay_nanos > 0) {
    seq.phase = Phase::kDelayed;
    seq.ready_at = now + spec.extra_delay_nanos;
    delayed_.push({seq.ready_at, spec.id});
    ++delayed_live_;
  } else {
    seq.phase = Phase::kWaiting;
    waiting_.push_back(spec.id);
    ++waiting_live_;
  }
  seqs_[spec.id] = seq;
  Admit(now);
}

bool SimEngine::Cancel(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  switch (it->second.phase) {
    case Phase::kDelayed:
      --delayed_live_;
      break;
    case Phase::kWaiting:
      --waiting_live_;
      break;
    case Phase::kPrefill:
      --slots_used_;
      break;
    case Phase::kDecode:
      --slots_used_;
      --decoding_live_;
      break;
  }
  seqs_.erase(it);
  ++counters_.cancelled;
  DropDeadFronts();
  Admit(clock_->NowNanos());
  return true;
}

void SimEngine::DropDeadFronts() {
  while (!delayed_.empty()) {
    auto it = seqs_.find(delayed_.top().second);
    if (it != seqs_.end() && it->second.phase == Phase::kDelayed) break;
    delayed_.pop();
  }
  while (!prefill_.empty()) {
    auto it = seqs_.find(prefill_.front());
    if (it != seqs_.end() && it->second.phase == Phase::kPrefill) break;
    prefill_.pop_front();
  }
}

int64_t SimEngine::NextWakeNanos() const {
  int64_t t = -1;
  auto consider = [&t](int64_t x) {
    if (t < 0 || x < t) t = x;
  };
  if (!delayed_.empty()) consider(delayed_.top().first);
  if (!prefill_.empty()) {
    auto it = seqs_.find(prefill_.front());
    if (it != seqs_.end()) consider(it->second.ready_at);
  }
  if (step_active_) consider(step_end_);
  return t;
}

void SimEngine::Admit(int64_t now) {
  while (slots_used_ < slots_ && !waiting_.empty()) {
    int64_t id = waiting_.front();
    waiting_.pop_front();
    auto it = seqs_.find(id);
    if (it == seqs_.end() || it->second.phase != Phase::kWaiting) continue;
    Seq& seq = it->second;
    seq.phase = Phase::kPrefill;
    --waiting_live_;
    ++slots_used_;
    int64_t start = std::max(now, prefill_free_at_);
    seq.ready_at = start + PrefillNanos(seq.spec.prompt_tokens);
    prefill_free_at_ = seq.ready_at;
    counters_.prefill_tokens += seq.spec.prompt_tokens;
    prefill_.push_back(id);
  }
}

void SimEngine::StartStep(int64_t now) {
  decode_.erase(std::remove_if(decode_.begin(), decode_.end(),
                               [this](int64_t id) {
                                 auto it = seqs_.find(id);
                                 return it == seqs_.end() || it->second.phase != Phase::kDecode;
                               }),
                decode_.end());
  if (decode_.empty()) return;
  step_active_ = true;
  step_end_ = now + StepNanos(static_cast<int64_t>(decode_.size()));
  ++counters_.steps;
  if (step_observer_) step_observer_(static_cast<int64_t>(decode_.size()), step_end_ - now);
}

void SimEngine::Report(Seq* seq, bool done, std::vector<SeqEvent>* events) {
  if (seq->event_index >= 0) {
    SeqEvent& ev = (*events)[static_cast<size_t>(seq->event_index)];
    ev.tokens = seq->emitted;
    ev.done = done;
    return;
  }
  seq->event_index = static_cast<int64_t>(events->size());
  events->push_back(SeqEvent{seq->spec.id, seq->emitted, done});
}

void SimEngine::EndStep(int64_t now, std::vector<SeqEvent>* events) {
  step_active_ = false;
  std::vector<int64_t> next;
  next.reserve(decode_.size() + joining_.size());
  for (int64_t id : decode_) {
    auto it = seqs_.find(id);
    if (it == seqs_.end() || it->second.phase != Phase::kDecode) continue;
    Seq& seq = it->second;
    ++seq.emitted;
    ++counters_.tokens_generated;
    if (seq.emitted >= seq.spec.output_tokens) {
      Report(&seq, /*done=*/true, events);
      --slots_used_;
      --decoding_live_;
      ++counters_.completed;
      seqs_.erase(it);
    } else {
      if (seq.spec.stream) Report(&seq, /*done=*/false, events);
      next.push_back(id);
    }
  }
  for (int64_t id : joining_) next.push_back(id);
  joining_.clear();
  decode_.swap(next);
}

void SimEngine::Advance(std::vector<SeqEvent>* events) {
  const int64_t now = clock_->NowNanos();
  const size_t base = events->size();
  while (true) {
    const int64_t t = NextWakeNanos();
    if (t < 0 || t > now) break;
    while (!delayed_.empty() && delayed_.top().first <= t) {
      int64_t id = delayed_.top().second;
      delayed_.pop();
      auto it = seqs_.find(id);
      if (it == seqs_.end() || it->second.phase != Phase::kDelayed) continue;
      it->second.phase = Phase::kWaiting;
      --delayed_live_;
      ++waiting_live_;
      waiting_.push_back(id);
    }
    while (!prefill_.empty()) {
      int64_t id = prefill_.front();
      auto it = seqs_.find(id);
      if (it == seqs_.end() || it->second.phase != Phase::kPrefill) {
        prefill_.pop_front();
        continue;
      }
      if (it->second.ready_at > t) break;
      prefill_.pop_front();
      it->second.phase = Phase::kDecode;
      ++decoding_live_;
      (step_active_ ? joining_ : decode_).push_back(id);
    }
    if (step_active_ && step_end_ <= t) EndStep(t, events);
    Admit(t);
    if (!step_active_) StartStep(t);
    DropDeadFronts();
  }
  for (size_t i = base; i < events->size(); ++i) {
    if ((*events)[i].done) continue;
    auto it = seqs_.find((*events)[i].id);
    if (it != seqs_.end()) it->second.event_index = -1;
  }
}

}  // namespace matrix::llm_sim
