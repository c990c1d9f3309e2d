// SimEngine: the timing model of a continuous-batching serving engine (vLLM
// style), as pure logic on an injected Clock. It decides when each sequence
// gets its tokens; it knows nothing of text, HTTP or sockets.
//
// Model:
//   * `slots` sequences hold a batch slot at once; the others wait in FIFO order.
//   * A sequence admitted to a slot first pays prefill. Prefill throughput
//     (prefill_tokens_per_s) is shared: admitted prompts are prefilled one after
//     another, so a burst of long prompts delays every newcomer, as on a GPU.
//   * Decoding advances in engine steps. One step emits one token for every
//     decoding sequence and lasts (step_ms + step_ms_per_seq * batch) / speed.
//     A sequence whose prefill ends during a step joins at the next step; a
//     finished sequence frees its slot at the end of its last step, and waiting
//     sequences are admitted at once.
//   * A latency spike (extra_delay_nanos) holds a sequence before it queues.
// One periodic timer drives everything: the owner calls Advance() when
// NextWakeNanos() is reached, and Advance() processes all steps due, in time
// order, even when it is called late (simulated time never slips).
//
// Thread-safety: not thread-safe; one owner (the server's engine strand, or a
// test) calls every method.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <queue>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/base/clock.h"
#include "daemons/llm_sim/sim_config.h"

namespace matrix::llm_sim {

struct SeqSpec {
  int64_t id = 0;             // caller-chosen, unique among live sequences
  int64_t prompt_tokens = 0;  // prefill cost
  int64_t output_tokens = 1;  // tokens to decode, >= 1
  bool stream = false;        // report progress every step (else only completion)
  int64_t extra_delay_nanos = 0;
};

// Progress of one sequence: `tokens` emitted so far; `done` when all are out
// (the sequence is then forgotten).
struct SeqEvent {
  int64_t id = 0;
  int64_t tokens = 0;
  bool done = false;
};

struct EngineCounters {
  int64_t steps = 0;
  int64_t tokens_generated = 0;
  int64_t prefill_tokens = 0;
  int64_t completed = 0;
  int64_t cancelled = 0;
};

class SimEngine {
 public:
  // Reads the engine fields of `config` (slots, step_ms, step_ms_per_seq,
  // prefill_tokens_per_s, speed). `clock` must outlive the engine.
  SimEngine(const SimConfig& config, const Clock* clock);

  // Adds a sequence arriving now. Call Advance() first so that slots freed by
  // overdue steps are seen. REQUIRES: spec.id not live, spec.output_tokens >= 1.
  void Submit(const SeqSpec& spec);

  // Removes a live sequence wherever it is (spike, queue, prefill, batch) and
  // frees its slot. A step already running keeps its duration. Returns false
  // when the id is not live (finished, cancelled or unknown).
  bool Cancel(int64_t id);

  // Processes everything due by the clock's now. Appends one event per
  // sequence that progressed (streaming sequences) or finished (all), carrying
  // its latest token count.
  void Advance(std::vector<SeqEvent>* events);

  // Clock time (ns) at which Advance() next has work; -1 when idle.
  int64_t NextWakeNanos() const;

  int64_t StepNanos(int64_t batch) const;
  int64_t PrefillNanos(int64_t prompt_tokens) const;

  // Sequences holding a slot (prefilling or decoding).
  int running() const { return slots_used_; }
  int decoding() const { return decoding_live_; }
  // Sequences not yet admitted (queued or inside a spike).
  int waiting() const { return waiting_live_ + delayed_live_; }
  const EngineCounters& counters() const { return counters_; }

  // Called when an engine step starts, with its batch (decoding sequences)
  // and its duration in ns; on the owner's thread, inside Advance().
  using StepObserver = std::function<void(int64_t batch, int64_t nanos)>;
  void set_step_observer(StepObserver observer) { step_observer_ = std::move(observer); }

 private:
  enum class Phase { kDelayed, kWaiting, kPrefill, kDecode };
  struct Seq {
    SeqSpec spec;
    Phase phase = Phase::kWaiting;
    int64_t emitted = 0;
    int64_t ready_at = 0;      // end of spike or of prefill
    int64_t event_index = -1;  // slot in the events vector during one Advance
  };
  using TimedId = std::pair<int64_t, int64_t>;  // (time, id)

  void Admit(int64_t now);
  void StartStep(int64_t now);
  void EndStep(int64_t now, std::vector<SeqEvent>* events);
  void Report(Seq* seq, bool done, std::vector<SeqEvent>* events);
  void DropDeadFronts();

  const int slots_;
  const double step_ms_;
  const double step_ms_per_seq_;
  const double prefill_tokens_per_s_;
  const double speed_;
  const Clock* clock_;

  // Invariants: every id in the containers below that is not in seqs_ (or no
  // longer in the phase the container stands for) is a cancelled leftover and
  // is skipped; slots_used_ counts live kPrefill + kDecode sequences and never
  // exceeds slots_; prefill_ is ordered by ready_at; when step_active_, decode_
  // holds the batch of the running step and joining_ the sequences that enter
  // at its end.
  std::unordered_map<int64_t, Seq> seqs_;
  std::priority_queue<TimedId, std::vector<TimedId>, std::greater<TimedId>> delayed_;
  std::deque<int64_t> waiting_;
  std::deque<int64_t> prefill_;
  std::vector<int64_t> decode_;
  std::vector<int64_t> joining_;
  int slots_used_ = 0;
  int waiting_live_ = 0;
  int delayed_live_ = 0;
  int decoding_live_ = 0;
  bool step_active_ = false;
  int64_t step_end_ = 0;
  int64_t prefill_free_at_ = 0;
  EngineCounters counters_;
  StepObserver step_observer_;
};

}  // namespace matrix::llm_sim
