// Unit tests of SimEngine's continuous-batching timing model on a FakeClock:
// prefill, one token per step, step time growing with the batch, FIFO
// queueing beyond the slots, cancellation, spikes, late catch-up, speed.
#include "daemons/llm_sim/sim_engine.h"

#include <gtest/gtest.h>

#include <map>

namespace matrix::llm_sim {
namespace {

constexpr int64_t kMs = 1'000'000;

SimConfig EngineConfig() {
  SimConfig c;
  c.slots = 4;
  c.step_ms = 10;
  c.step_ms_per_seq = 1;
  c.prefill_tokens_per_s = 1000;  // 1 token per ms
  c.speed = 1;
  return c;
}

SeqSpec Spec(int64_t id, int64_t prompt, int64_t output, bool stream = true, int64_t delay = 0) {
  SeqSpec s;
  s.id = id;
  s.prompt_tokens = prompt;
  s.output_tokens = output;
  s.stream = stream;
  s.extra_delay_nanos = delay;
  return s;
}

std::vector<SeqEvent> AdvanceTo(SimEngine* e, FakeClock* clock, int64_t t_nanos) {
  clock->AdvanceNanos(t_nanos - clock->NowNanos());
  std::vector<SeqEvent> events;
  e->Advance(&events);
  return events;
}

TEST(SimEngineTest, PrefillThenOneTokenPerStep) {
  FakeClock clock(0);
  SimEngine e(EngineConfig(), &clock);
  e.Submit(Spec(1, 100, 3));
  EXPECT_EQ(e.running(), 1);
  EXPECT_EQ(e.NextWakeNanos(), 100 * kMs);  // 100 prompt tokens at 1000 tokens/s
  EXPECT_TRUE(AdvanceTo(&e, &clock, 99 * kMs).empty());
  EXPECT_TRUE(AdvanceTo(&e, &clock, 100 * kMs).empty());
  EXPECT_EQ(e.decoding(), 1);
  EXPECT_EQ(e.NextWakeNanos(), 111 * kMs);  // step = 10 + 1 * 1 ms
  auto ev = AdvanceTo(&e, &clock, 111 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, 1);
  EXPECT_EQ(ev[0].tokens, 1);
  EXPECT_FALSE(ev[0].done);
  ev = AdvanceTo(&e, &clock, 122 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].tokens, 2);
  ev = AdvanceTo(&e, &clock, 133 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].tokens, 3);
  EXPECT_TRUE(ev[0].done);
  EXPECT_EQ(e.running(), 0);
  EXPECT_EQ(e.NextWakeNanos(), -1);
  EXPECT_EQ(e.counters().tokens_generated, 3);
  EXPECT_EQ(e.counters().completed, 1);
}

TEST(SimEngineTest, StepTimeGrowsWithRunningSequences) {
  EXPECT_EQ(SimEngine(EngineConfig(), nullptr).StepNanos(1), 11 * kMs);
  EXPECT_EQ(SimEngine(EngineConfig(), nullptr).StepNanos(4), 14 * kMs);

  FakeClock one_clock(0);
  SimEngine one(EngineConfig(), &one_clock);
  one.Submit(Spec(1, 0, 5));
  AdvanceTo(&one, &one_clock, 0);
  EXPECT_EQ(one.NextWakeNanos(), 11 * kMs);

  FakeClock four_clock(0);
  SimEngine four(EngineConfig(), &four_clock);
  for (int i = 1; i <= 4; ++i) four.Submit(Spec(i, 0, 5));
  AdvanceTo(&four, &four_clock, 0);
  EXPECT_EQ(four.decoding(), 4);
  EXPECT_EQ(four.NextWakeNanos(), 14 * kMs);
  auto ev = AdvanceTo(&four, &four_clock, 14 * kMs);
  EXPECT_EQ(ev.size(), 4u);  // one token for every running sequence in one step
}

TEST(SimEngineTest, QueuesBeyondSlotsInFifoOrder) {
  SimConfig c = EngineConfig();
  c.slots = 2;
  FakeClock clock(0);
  SimEngine e(c, &clock);
  e.Submit(Spec(1, 0, 2, false));
  e.Submit(Spec(2, 0, 2, false));
  e.Submit(Spec(3, 0, 2, false));
  e.Submit(Spec(4, 0, 2, false));
  EXPECT_EQ(e.running(), 2);
  EXPECT_EQ(e.waiting(), 2);
  AdvanceTo(&e, &clock, 0);
  // Two steps of a batch of 2 (12 ms each) finish sequences 1 and 2.
  auto ev = AdvanceTo(&e, &clock, 24 * kMs);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].id, 1);
  EXPECT_EQ(ev[1].id, 2);
  EXPECT_TRUE(ev[0].done && ev[1].done);
  EXPECT_EQ(e.running(), 2);  // 3 and 4 admitted at once
  EXPECT_EQ(e.waiting(), 0);
  ev = AdvanceTo(&e, &clock, 48 * kMs);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].id, 3);
  EXPECT_EQ(ev[1].id, 4);
  EXPECT_EQ(e.running(), 0);
}

TEST(SimEngineTest, PrefillThroughputIsShared) {
  FakeClock clock(0);
  SimEngine e(EngineConfig(), &clock);
  e.Submit(Spec(1, 100, 1));
  e.Submit(Spec(2, 100, 1));
  EXPECT_EQ(e.NextWakeNanos(), 100 * kMs);
  AdvanceTo(&e, &clock, 100 * kMs);
  EXPECT_EQ(e.decoding(), 1);
  // The second prompt is prefilled after the first: ready at 200 ms, while the
  // first sequence's step (11 ms) ends at 111 ms.
  auto ev = AdvanceTo(&e, &clock, 111 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, 1);
  EXPECT_EQ(e.NextWakeNanos(), 200 * kMs);
  ev = AdvanceTo(&e, &clock, 211 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, 2);
}

TEST(SimEngineTest, SequenceJoinsAtNextStepBoundary) {
  FakeClock clock(0);
  SimEngine e(EngineConfig(), &clock);
  e.Submit(Spec(1, 0, 10));
  AdvanceTo(&e, &clock, 0);  // step 0..11 ms with one sequence
  clock.AdvanceNanos(5 * kMs);
  std::vector<SeqEvent> ignored;
  e.Advance(&ignored);
  e.Submit(Spec(2, 0, 10));  // prefill done at 5 ms, mid-step
  AdvanceTo(&e, &clock, 5 * kMs);
  auto ev = AdvanceTo(&e, &clock, 11 * kMs);
  ASSERT_EQ(ev.size(), 1u);  // only sequence 1 was in the first step
  EXPECT_EQ(ev[0].id, 1);
  EXPECT_EQ(e.NextWakeNanos(), (11 + 12) * kMs);  // next step has both
  ev = AdvanceTo(&e, &clock, 23 * kMs);
  EXPECT_EQ(ev.size(), 2u);
}

TEST(SimEngineTest, CancelFreesTheSlot) {
  SimConfig c = EngineConfig();
  c.slots = 1;
  FakeClock clock(0);
  SimEngine e(c, &clock);
  e.Submit(Spec(1, 0, 100));
  e.Submit(Spec(2, 0, 1));
  AdvanceTo(&e, &clock, 0);
  EXPECT_EQ(e.waiting(), 1);
  EXPECT_TRUE(e.Cancel(1));
  EXPECT_FALSE(e.Cancel(1));
  EXPECT_FALSE(e.Cancel(42));
  EXPECT_EQ(e.running(), 1);
  EXPECT_EQ(e.waiting(), 0);
  // The running step keeps its length; sequence 2 decodes in the next one.
  auto ev = AdvanceTo(&e, &clock, 11 * kMs);
  EXPECT_TRUE(ev.empty());
  ev = AdvanceTo(&e, &clock, 22 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, 2);
  EXPECT_TRUE(ev[0].done);
  EXPECT_EQ(e.counters().cancelled, 1);
  EXPECT_EQ(e.NextWakeNanos(), -1);
}

TEST(SimEngineTest, CancelWhileQueuedOrInSpike) {
  SimConfig c = EngineConfig();
  c.slots = 1;
  FakeClock clock(0);
  SimEngine e(c, &clock);
  e.Submit(Spec(1, 0, 3));
  e.Submit(Spec(2, 0, 3));
  e.Submit(Spec(3, 0, 3, true, 50 * kMs));
  EXPECT_EQ(e.waiting(), 2);
  EXPECT_TRUE(e.Cancel(2));
  EXPECT_TRUE(e.Cancel(3));
  EXPECT_EQ(e.waiting(), 0);
  auto ev = AdvanceTo(&e, &clock, 1000 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].id, 1);
  EXPECT_EQ(e.NextWakeNanos(), -1);
}

TEST(SimEngineTest, SpikeDelaysAdmission) {
  FakeClock clock(0);
  SimEngine e(EngineConfig(), &clock);
  e.Submit(Spec(1, 0, 1, false, 50 * kMs));
  EXPECT_EQ(e.waiting(), 1);
  EXPECT_EQ(e.running(), 0);
  EXPECT_EQ(e.NextWakeNanos(), 50 * kMs);
  AdvanceTo(&e, &clock, 50 * kMs);
  EXPECT_EQ(e.running(), 1);
  auto ev = AdvanceTo(&e, &clock, 61 * kMs);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_TRUE(ev[0].done);
}

TEST(SimEngineTest, LateAdvanceCatchesUpWithOneEventPerSequence) {
  FakeClock clock(0);
  SimEngine e(EngineConfig(), &clock);
  e.Submit(Spec(1, 0, 5, /*stream=*/true));
  e.Submit(Spec(2, 0, 50, /*stream=*/true));
  e.Submit(Spec(3, 0, 5, /*stream=*/false));
  // Five steps of 13 ms (batch of 3) end sequences 1 and 3 at 65 ms, then
  // three steps of 11 ms (batch of 1) by 98 ms.
  auto ev = AdvanceTo(&e, &clock, 100 * kMs);
  std::map<int64_t, SeqEvent> by_id;
  for (const auto& x : ev) {
    EXPECT_EQ(by_id.count(x.id), 0u) << "two events for " << x.id;
    by_id[x.id] = x;
  }
  ASSERT_EQ(by_id.size(), 3u);
  EXPECT_TRUE(by_id[1].done);
  EXPECT_EQ(by_id[1].tokens, 5);
  EXPECT_FALSE(by_id[2].done);
  EXPECT_EQ(by_id[2].tokens, 8);
  EXPECT_TRUE(by_id[3].done);
}

TEST(SimEngineTest, NonStreamingSequencesReportOnlyCompletion) {
  FakeClock clock(0);
  SimEngine e(EngineConfig(), &clock);
  e.Submit(Spec(1, 0, 3, /*stream=*/false));
  AdvanceTo(&e, &clock, 0);
  EXPECT_TRUE(AdvanceTo(&e, &clock, 11 * kMs).empty());
  EXPECT_TRUE(AdvanceTo(&e, &clock, 22 * kMs).empty());
  EXPECT_EQ(AdvanceTo(&e, &clock, 33 * kMs).size(), 1u);
}

TEST(SimEngineTest, SpeedDividesEveryDuration) {
  SimConfig c = EngineConfig();
  c.speed = 10;
  SimEngine e(c, nullptr);
  EXPECT_EQ(e.StepNanos(0), 1 * kMs);
  EXPECT_EQ(e.StepNanos(10), 2 * kMs);
  EXPECT_EQ(e.PrefillNanos(1000), 100 * kMs);
}

TEST(SimEngineTest, ThroughputOfAFullBatch) {
  SimConfig c;  // defaults: 256 slots, 8 ms + 0.02 ms per sequence
  FakeClock clock(0);
  SimEngine e(c, &clock);
  for (int i = 0; i < 1000; ++i) e.Submit(Spec(i + 1, 0, 10, false));
  EXPECT_EQ(e.running(), 256);
  EXPECT_EQ(e.waiting(), 744);
  int64_t done = 0;
  int64_t t = 0;
  while (e.NextWakeNanos() >= 0) {
    t = e.NextWakeNanos();
    for (const auto& ev : AdvanceTo(&e, &clock, t)) done += ev.done ? 1 : 0;
  }
  EXPECT_EQ(done, 1000);
  // 4 waves (256, 256, 256, 232) of 10 steps; full steps last 8 + 0.02 * 256 ms.
  const double full_step_ms = 8 + 0.02 * 256;
  EXPECT_GT(t, static_cast<int64_t>(30 * full_step_ms * kMs));
  EXPECT_LT(t, static_cast<int64_t>(40 * full_step_ms * kMs));
}

}  // namespace
}  // namespace matrix::llm_sim
