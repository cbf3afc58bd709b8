// The GPU expert cache's bookkeeping: LRU and LFU hits, misses and evictions match an independent reference
// model exactly, on hand-written traces (with textbook counts) and on long pseudo-random routing; a slot that is
// Loading or pinned is never chosen as a victim under random interleavings of the compute side and the
// streamer; bytes streamed into slots through a simulated device are the right expert's whenever a kernel
// reads them; zero-slot layers and bad input behave.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <list>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "offload/expert_cache.h"
#include "planner/core/error.h"
#include "runtime/backend/sim_backend.h"
#include "test_errors.h"

namespace ferry::offload {
namespace {

using ferry_test::error_of;

// The reference: a recency list of cached experts (front = most recent), no slots. LRU evicts the back; LFU the
// entry with the lowest all-time count, scanning from the back so that a tie goes to the least recent.
class ModelCache {
 public:
  ModelCache(size_t capacity, CachePolicy policy) : capacity_(capacity), policy_(policy) {}

  struct Result {
    bool hit = false;
    bool cached = false;  // a miss that found room (false: capacity 0)
    int evicted = -1;
  };

  Result access(int e) {
    ++count_[e];
    Result r;
    auto it = std::find(order_.begin(), order_.end(), e);
    if (it != order_.end()) {
      order_.erase(it);
      order_.push_front(e);
      r.hit = true;
      return r;
    }
    if (capacity_ == 0) return r;
    r.cached = true;
    if (order_.size() == capacity_) {
      auto victim = std::prev(order_.end());
      if (policy_ == CachePolicy::Lfu)
        for (auto j = order_.rbegin(); j != order_.rend(); ++j)
          if (count_[*j] < count_[*victim]) victim = std::prev(j.base());
      r.evicted = *victim;
      order_.erase(victim);
    }
    order_.push_front(e);
    return r;
  }

  bool contains(int e) const { return std::find(order_.begin(), order_.end(), e) != order_.end(); }

 private:
  size_t capacity_;
  CachePolicy policy_;
  std::list<int> order_;
  std::map<int, int64_t> count_;
};

// Drives `layer` with `trace` as the compute side would when nothing overlaps: lookup, copy lands, kernel
// reads, release. Checks every answer against `model` and that slots stay consistent; returns the evicted
// experts in order.
std::vector<int> drive(ExpertCache& cache, int layer, ModelCache& model, const std::vector<int>& trace) {
  std::vector<int> evicted;
  std::map<int, int> slot_of;  // the test's own record of where each expert went
  for (size_t i = 0; i < trace.size(); ++i) {
    const int e = trace[i];
    const ModelCache::Result want = model.access(e);
    const Lookup got = cache.lookup(layer, e);
    SCOPED_TRACE("step " + std::to_string(i) + ", expert " + std::to_string(e));
    if (want.hit) {
      EXPECT_EQ(got.kind, LookupKind::Hit);
      EXPECT_EQ(got.slot, slot_of.at(e));
      EXPECT_TRUE(got.ready);
    } else if (want.cached) {
      EXPECT_EQ(got.kind, LookupKind::Miss);
      EXPECT_EQ(got.evicted, want.evicted);
      if (want.evicted >= 0) {
        EXPECT_EQ(got.slot, slot_of.at(want.evicted));  // the victim's own slot, not another
        slot_of.erase(want.evicted);
        evicted.push_back(want.evicted);
      }
      slot_of[e] = got.slot;
      EXPECT_EQ(cache.slot_info(layer, got.slot).state, SlotState::Loading);
      cache.loaded(layer, got.slot);
    } else {
      EXPECT_EQ(got.kind, LookupKind::NoSlot);
    }
    if (got.kind != LookupKind::NoSlot) {
      EXPECT_EQ(cache.slot_info(layer, got.slot).pins, 1);
      cache.release(layer, got.slot);
    }
    if (::testing::Test::HasFailure()) break;  // one divergence is enough to read
  }
  return evicted;
}

CacheStats expected_stats(size_t capacity, CachePolicy policy, const std::vector<int>& trace) {
  ModelCache m(capacity, policy);
  CacheStats s;
  for (int e : trace) {
    const ModelCache::Result r = m.access(e);
    if (r.hit) {
      ++s.hits;
      continue;
    }
    ++s.misses;
    if (!r.cached) ++s.no_slot;
    if (r.evicted >= 0) ++s.evictions;
  }
  return s;
}

void expect_stats(const CacheStats& got, const CacheStats& want) {
  EXPECT_EQ(got.hits, want.hits);
  EXPECT_EQ(got.misses, want.misses);
  EXPECT_EQ(got.no_slot, want.no_slot);
  EXPECT_EQ(got.evictions, want.evictions);
  EXPECT_EQ(got.prefetch_fills, want.prefetch_fills);
}

const std::vector<int> kBelady = {1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5};

TEST(ExpertCache, LruOnBeladysTraceHasTheTextbookFaultCounts) {
  ExpertCache cache({3, 4}, 8);
  ModelCache m3(3, CachePolicy::Lru), m4(4, CachePolicy::Lru);
  EXPECT_EQ(drive(cache, 0, m3, kBelady), (std::vector<int>{1, 2, 3, 4, 5, 1, 2}));
  EXPECT_EQ(drive(cache, 1, m4, kBelady), (std::vector<int>{3, 4, 5, 1}));
  expect_stats(cache.stats(0), CacheStats{.hits = 2, .misses = 10, .no_slot = 0, .evictions = 7});
  expect_stats(cache.stats(1), CacheStats{.hits = 4, .misses = 8, .no_slot = 0, .evictions = 4});
  for (int e = 0; e < 8; ++e) {
    EXPECT_EQ(cache.contains(0, e), e == 3 || e == 4 || e == 5) << e;
    EXPECT_EQ(cache.contains(1, e), e >= 2 && e <= 5) << e;
  }
}

TEST(ExpertCache, LfuOnBeladysTraceEvictsTheLeastUsedThenTheLeastRecent) {
  ExpertCache cache({3}, 8, CachePolicy::Lfu);
  ModelCache m(3, CachePolicy::Lfu);
  // Worked by hand: 1, 2, 3 and 4 are evicted on ties (all used once, least recent first); 5, 3 and 4 later
  // because 1 and 2 have been used three times by then. LRU would evict 1 and 2 at the end instead.
  EXPECT_EQ(drive(cache, 0, m, kBelady), (std::vector<int>{1, 2, 3, 4, 5, 3, 4}));
  expect_stats(cache.stats(0), CacheStats{.hits = 2, .misses = 10, .no_slot = 0, .evictions = 7});
  EXPECT_TRUE(cache.contains(0, 1));
  EXPECT_TRUE(cache.contains(0, 2));
  EXPECT_TRUE(cache.contains(0, 5));
  EXPECT_EQ(cache.uses(0, 1), 3);
  EXPECT_EQ(cache.uses(0, 5), 2);
}

TEST(ExpertCache, LruAndLfuDisagreeWhereTheyShould) {
  // A A B C: LRU evicts A (last used before B); LFU keeps A (used twice) and evicts B.
  const std::vector<int> trace = {0, 0, 1, 2};
  ExpertCache lru({2}, 4), lfu({2}, 4, CachePolicy::Lfu);
  ModelCache ml(2, CachePolicy::Lru), mf(2, CachePolicy::Lfu);
  EXPECT_EQ(drive(lru, 0, ml, trace), std::vector<int>{0});
  EXPECT_EQ(drive(lfu, 0, mf, trace), std::vector<int>{1});
}

TEST(ExpertCache, LfuCountsSurviveEviction) {
  // 0 is used twice, 1 three times; 2 evicts 0 (the least used); 0 comes back (now 3 uses) and evicts 2. Then
  // 3 finds 0 and 1 tied at 3 and evicts 1, the less recent. Counting only while cached would restart 0 at 1
  // when it came back, and 3 would evict 0 instead.
  const std::vector<int> trace = {0, 0, 1, 1, 1, 2, 0, 3};
  ExpertCache cache({2}, 4, CachePolicy::Lfu);
  ModelCache m(2, CachePolicy::Lfu);
  EXPECT_EQ(drive(cache, 0, m, trace), (std::vector<int>{0, 2, 1}));
  EXPECT_TRUE(cache.contains(0, 0));
  EXPECT_TRUE(cache.contains(0, 3));
  EXPECT_EQ(cache.uses(0, 0), 3);
  EXPECT_EQ(cache.uses(0, 2), 1);  // counted while it is not cached too
}

TEST(ExpertCache, HandWrittenTracesMatchTheModelForBothPolicies) {
  const std::vector<std::vector<int>> traces = {
      {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7},           // a scan larger than the cache
      {0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 1, 1, 1, 2, 3, 4},     // one hot expert among one-offs
      {5, 5, 5, 5, 6, 6, 6, 7, 7, 0, 1, 2, 3, 0, 1, 2, 3, 5, 6},  // a popular phase, then a shift
      {3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 7, 6, 7, 6, 7, 6, 0},
  };
  for (CachePolicy p : {CachePolicy::Lru, CachePolicy::Lfu})
    for (size_t t = 0; t < traces.size(); ++t) {
      SCOPED_TRACE("trace " + std::to_string(t) + (p == CachePolicy::Lru ? " lru" : " lfu"));
      const std::vector<int64_t> slots = {1, 2, 3, 5, 8};
      ExpertCache cache(slots, 8, p);
      for (size_t l = 0; l < slots.size(); ++l) {
        ModelCache m(static_cast<size_t>(slots[l]), p);
        drive(cache, static_cast<int>(l), m, traces[t]);
        expect_stats(cache.stats(static_cast<int>(l)), expected_stats(static_cast<size_t>(slots[l]), p, traces[t]));
        for (int e = 0; e < 8; ++e) EXPECT_EQ(cache.contains(static_cast<int>(l), e), m.contains(e));
      }
    }
}

// Top-k routing with a skewed, drifting popularity, as MoE routers produce: distinct experts per token.
std::vector<int> routing_trace(uint32_t seed, int experts, int top_k, int tokens) {
  std::mt19937 rng(seed);
  std::vector<double> weight(static_cast<size_t>(experts));
  std::vector<int> trace;
  for (int t = 0; t < tokens; ++t) {
    if (t % 500 == 0)  // the popular experts shift with the text
      for (int e = 0; e < experts; ++e)
        weight[static_cast<size_t>(e)] = 1.0 / std::pow(1.0 + static_cast<double>((e * 7 + t / 500) % experts), 1.1);
    std::discrete_distribution<int> pick(weight.begin(), weight.end());
    std::vector<int> chosen;
    while (static_cast<int>(chosen.size()) < top_k) {
      const int e = pick(rng);
      if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
    }
    trace.insert(trace.end(), chosen.begin(), chosen.end());
  }
  return trace;
}

TEST(ExpertCache, LongRandomRoutingMatchesTheModelExactly) {
  constexpr int kExperts = 64, kTopK = 6, kTokens = 4000;
  const std::vector<int64_t> slots = {0, 1, 6, 12, 24, 48, 64};
  for (CachePolicy p : {CachePolicy::Lru, CachePolicy::Lfu}) {
    SCOPED_TRACE(p == CachePolicy::Lru ? "lru" : "lfu");
    ExpertCache cache(slots, kExperts, p);
    for (size_t l = 0; l < slots.size(); ++l) {
      const std::vector<int> trace = routing_trace(static_cast<uint32_t>(100 + l), kExperts, kTopK, kTokens);
      ModelCache m(static_cast<size_t>(slots[l]), p);
      drive(cache, static_cast<int>(l), m, trace);
      const CacheStats want = expected_stats(static_cast<size_t>(slots[l]), p, trace);
      expect_stats(cache.stats(static_cast<int>(l)), want);
      for (int e = 0; e < kExperts; ++e) EXPECT_EQ(cache.contains(static_cast<int>(l), e), m.contains(e));
      // The trace is non-trivial for the caches in between: both hits and evictions happen.
      if (slots[l] > 0 && slots[l] < kExperts) {
        EXPECT_GT(want.hits, 0);
        EXPECT_GT(want.evictions, 1000);
      }
    }
  }
}

TEST(ExpertCache, ZeroSlotLayersNeverCacheAndAlwaysSaySo) {
  ExpertCache cache({0, 2}, 4);
  for (int i = 0; i < 5; ++i) {
    const Lookup r = cache.lookup(0, i % 4);
    EXPECT_EQ(r.kind, LookupKind::NoSlot);
    EXPECT_EQ(r.slot, -1);
    EXPECT_FALSE(cache.contains(0, i % 4));
  }
  const std::vector<int> want = {0, 1, 2};
  EXPECT_TRUE(cache.prefetch(0, want).empty());
  expect_stats(cache.stats(0), CacheStats{.hits = 0, .misses = 5, .no_slot = 5, .evictions = 0});
  EXPECT_EQ(cache.uses(0, 0), 2);
  EXPECT_EQ(cache.slots(0), 0);
  EXPECT_NE(error_of([&] { cache.slot_info(0, 0); }).find("slot 0 out of range"), std::string::npos);
  EXPECT_EQ(cache.lookup(1, 0).kind, LookupKind::Miss);  // the other layer is unaffected
  ExpertCache none({}, 4);
  EXPECT_EQ(none.layers(), 0);
}

TEST(ExpertCache, BusySlotsAreNeverVictimsAndAFullLayerSaysNoSlot) {
  ExpertCache cache({2}, 8);
  const Lookup a = cache.lookup(0, 0);  // Loading and pinned
  const Lookup b = cache.lookup(0, 1);
  ASSERT_EQ(a.kind, LookupKind::Miss);
  ASSERT_EQ(b.kind, LookupKind::Miss);
  EXPECT_EQ(cache.lookup(0, 2).kind, LookupKind::NoSlot);  // both Loading
  cache.loaded(0, a.slot);
  cache.loaded(0, b.slot);
  EXPECT_EQ(cache.lookup(0, 2).kind, LookupKind::NoSlot);  // both Ready but still pinned
  cache.release(0, b.slot);
  const Lookup c = cache.lookup(0, 2);  // only b's slot is free to take, though a's is less recent
  EXPECT_EQ(c.kind, LookupKind::Miss);
  EXPECT_EQ(c.slot, b.slot);
  EXPECT_EQ(c.evicted, 1);
  EXPECT_TRUE(cache.contains(0, 0));
  expect_stats(cache.stats(0), CacheStats{.hits = 0, .misses = 5, .no_slot = 2, .evictions = 1});
  // Two readers of one slot: it stays protected until both release.
  EXPECT_EQ(cache.lookup(0, 0).kind, LookupKind::Hit);
  cache.release(0, a.slot);
  cache.loaded(0, c.slot);
  EXPECT_EQ(cache.lookup(0, 3).kind, LookupKind::NoSlot);
  cache.release(0, a.slot);
  EXPECT_EQ(cache.lookup(0, 3).evicted, 0);
}

TEST(ExpertCache, PrefetchFillsTheChosenExpertsWithoutPinningOrCountingUses) {
  ExpertCache cache({3}, 8);
  for (int e : {0, 1}) {
    const Lookup r = cache.lookup(0, e);
    cache.loaded(0, r.slot);
    cache.release(0, r.slot);
  }
  // 1 is the most recent, 0 the least: LRU alone would give 5 the slot of 0 after the free one, but 0 is chosen
  // for this very layer, so 1's slot goes instead.
  const std::vector<int> chosen = {0, 4, 4, 5};
  const std::vector<Fill> fills = cache.prefetch(0, chosen);
  ASSERT_EQ(fills.size(), 2u);
  EXPECT_EQ(fills[0].expert, 4);
  EXPECT_EQ(fills[0].slot, 2);  // the free slot first
  EXPECT_EQ(fills[0].evicted, -1);
  EXPECT_EQ(fills[1].expert, 5);
  EXPECT_EQ(fills[1].evicted, 1);
  for (const Fill& f : fills) {
    const SlotInfo s = cache.slot_info(0, f.slot);
    EXPECT_EQ(s.state, SlotState::Loading);
    EXPECT_EQ(s.pins, 0);
    EXPECT_EQ(s.expert, f.expert);
  }
  EXPECT_EQ(cache.uses(0, 4), 0);
  expect_stats(cache.stats(0), CacheStats{.hits = 0, .misses = 2, .no_slot = 0, .evictions = 1, .prefetch_fills = 2});
  // The compute side then finds them: a hit, not yet ready while the copy is in flight.
  const Lookup r = cache.lookup(0, 4);
  EXPECT_EQ(r.kind, LookupKind::Hit);
  EXPECT_FALSE(r.ready);
  cache.loaded(0, r.slot);
  EXPECT_TRUE(cache.lookup(0, 4).ready);
  // Everything is busy now (0 Ready but chosen, 4 pinned, 5 Loading): nothing more is started.
  const std::vector<int> more = {0, 6};
  EXPECT_TRUE(cache.prefetch(0, more).empty());
  EXPECT_EQ(cache.stats(0).evictions, 1);
}

TEST(ExpertCache, PrefetchForTheNextStepNeverTakesSlotsStillRead) {
  // Double buffering: step t's experts are pinned while its kernels run; the router of step t+1 has already
  // chosen, and its prefetch may only use the other slots.
  ExpertCache cache({4}, 16, CachePolicy::Lfu);
  std::vector<int> step_slots;
  for (int e : {0, 1}) {
    const Lookup r = cache.lookup(0, e);
    cache.loaded(0, r.slot);
    step_slots.push_back(r.slot);
  }
  const std::vector<int> next = {2, 3, 4, 5};
  const std::vector<Fill> fills = cache.prefetch(0, next);
  ASSERT_EQ(fills.size(), 2u);
  for (const Fill& f : fills) EXPECT_EQ(std::count(step_slots.begin(), step_slots.end(), f.slot), 0);
  EXPECT_EQ(cache.slot_info(0, step_slots[0]).expert, 0);
  EXPECT_EQ(cache.slot_info(0, step_slots[1]).expert, 1);
  for (int s : step_slots) cache.release(0, s);
  for (const Fill& f : fills) cache.loaded(0, f.slot);
  // Step t is done: the rest of step t+1 may now take its slots.
  const std::vector<Fill> rest = cache.prefetch(0, next);
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].expert, 4);
  EXPECT_EQ(rest[1].expert, 5);
  EXPECT_EQ(rest[0].evicted, 0);  // tied at one use each: the less recent goes first
  EXPECT_EQ(rest[1].evicted, 1);
}

// Over 80 lines on purpose: one randomized simulation whose shadow model, actions and checks read best together;
// split, the shadow's state would travel through every piece.
TEST(ExpertCache, RandomInterleavingsNeverOverwriteALoadingOrPinnedSlot) {
  struct Shadow {
    int expert = -1;
    SlotState state = SlotState::Free;
    int pins = 0;
    bool busy() const { return state == SlotState::Loading || pins > 0; }
    bool evictable(const std::vector<int>& keep) const {
      return state == SlotState::Free ||
             (state == SlotState::Ready && pins == 0 && std::count(keep.begin(), keep.end(), expert) == 0);
    }
  };
  constexpr int kExperts = 10;
  const std::vector<int64_t> slots = {1, 2, 3, 5};
  for (CachePolicy p : {CachePolicy::Lru, CachePolicy::Lfu}) {
    ExpertCache cache(slots, kExperts, p);
    std::vector<std::vector<Shadow>> shadow;
    for (int64_t n : slots) shadow.emplace_back(static_cast<size_t>(n));
    std::mt19937 rng(7);
    auto pick = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
    auto slots_where = [&](int l, const std::function<bool(const Shadow&)>& f) {
      std::vector<int> out;
      for (size_t s = 0; s < shadow[static_cast<size_t>(l)].size(); ++s)
        if (f(shadow[static_cast<size_t>(l)][s])) out.push_back(static_cast<int>(s));
      return out;
    };
    int64_t misses_beside_busy = 0, no_slots = 0, partial_prefetches = 0;
    for (int step = 0; step < 20000; ++step) {
      const int l = pick(static_cast<int>(slots.size()));
      std::vector<Shadow>& sh = shadow[static_cast<size_t>(l)];
      const std::vector<Shadow> before = sh;
      const int op = pick(10);
      int cancelled = -1;  // the streamer gave up this slot's copy itself
      SCOPED_TRACE("step " + std::to_string(step) + " layer " + std::to_string(l) + " op " + std::to_string(op));
      if (op < 3) {
        const int e = pick(kExperts);
        const Lookup r = cache.lookup(l, e);
        const std::vector<int> held = slots_where(l, [&](const Shadow& s) { return s.expert == e; });
        if (r.kind == LookupKind::Hit) {
          ASSERT_EQ(held, std::vector<int>{r.slot});
          ++sh[static_cast<size_t>(r.slot)].pins;
        } else if (r.kind == LookupKind::Miss) {
          ASSERT_TRUE(held.empty());
          ASSERT_TRUE(before[static_cast<size_t>(r.slot)].evictable({}));  // the victim was not busy
          ASSERT_EQ(r.evicted, before[static_cast<size_t>(r.slot)].expert);
          if (!slots_where(l, [](const Shadow& s) { return s.busy(); }).empty()) ++misses_beside_busy;
          sh[static_cast<size_t>(r.slot)] = Shadow{e, SlotState::Loading, 1};
        } else {
          ASSERT_TRUE(held.empty());
          ASSERT_TRUE(slots_where(l, [](const Shadow& s) { return s.evictable({}); }).empty());
          ++no_slots;
        }
      } else if (op < 5) {
        const std::vector<int> loading = slots_where(l, [](const Shadow& s) { return s.state == SlotState::Loading; });
        if (loading.empty()) continue;
        const int s = loading[static_cast<size_t>(pick(static_cast<int>(loading.size())))];
        cache.loaded(l, s);
        sh[static_cast<size_t>(s)].state = SlotState::Ready;
      } else if (op < 8) {
        const std::vector<int> pinned = slots_where(l, [](const Shadow& s) { return s.pins > 0; });
        if (pinned.empty()) continue;
        const int s = pinned[static_cast<size_t>(pick(static_cast<int>(pinned.size())))];
        cache.release(l, s);
        --sh[static_cast<size_t>(s)].pins;
      } else if (op < 9) {
        std::vector<int> chosen;
        for (int i = pick(4); i >= 0; --i) chosen.push_back(pick(kExperts));
        for (const Fill& f : cache.prefetch(l, chosen)) {
          ASSERT_TRUE(sh[static_cast<size_t>(f.slot)].evictable(chosen));
          ASSERT_EQ(f.evicted, sh[static_cast<size_t>(f.slot)].expert);
          ASSERT_TRUE(slots_where(l, [&](const Shadow& s) { return s.expert == f.expert; }).empty());
          sh[static_cast<size_t>(f.slot)] = Shadow{f.expert, SlotState::Loading, 0};
        }
        // An expert left without a slot means there was none left to take.
        for (int e : chosen)
          if (slots_where(l, [&](const Shadow& s) { return s.expert == e; }).empty()) {
            ASSERT_TRUE(slots_where(l, [&](const Shadow& s) { return s.evictable(chosen); }).empty());
            ++partial_prefetches;
            break;
          }
      } else {
        const std::vector<int> idle =
            slots_where(l, [](const Shadow& s) { return s.state == SlotState::Loading && s.pins == 0; });
        if (idle.empty()) continue;
        const int s = idle[static_cast<size_t>(pick(static_cast<int>(idle.size())))];
        cache.cancel(l, s);
        sh[static_cast<size_t>(s)] = Shadow{};
        cancelled = s;
      }
      // The invariant, straight from the cache: whatever was busy before the step holds the same expert,
      // unless the streamer cancelled its own copy.
      for (size_t s = 0; s < sh.size(); ++s) {
        const SlotInfo now = cache.slot_info(l, static_cast<int>(s));
        if (before[s].busy() && static_cast<int>(s) != cancelled) {
          ASSERT_EQ(now.expert, before[s].expert) << "slot " << s;
        }
        ASSERT_EQ(now.expert, sh[s].expert) << "slot " << s;
        ASSERT_EQ(now.state, sh[s].state) << "slot " << s;
        ASSERT_EQ(now.pins, sh[s].pins) << "slot " << s;
      }
      for (int e = 0; e < kExperts; ++e)
        ASSERT_EQ(cache.contains(l, e), !slots_where(l, [&](const Shadow& s) { return s.expert == e; }).empty());
    }
    // The interleavings reached the cases that matter.
    EXPECT_GT(misses_beside_busy, 500);
    EXPECT_GT(no_slots, 500);
    EXPECT_GT(partial_prefetches, 50);
  }
}

TEST(ExpertCache, KernelsReadTheRightBytesFromSlotsStreamedThroughASimulatedDevice) {
  // The intended use with runtime/backend/backend.h: fills become copies into a slot of one device buffer per layer,
  // loaded() follows the copy's event, and a "kernel" checks the bytes of every slot it pinned. Step t's kernels
  // run after step t+1's prefetch was queued and the stream drained, so an overwritten pinned slot would show.
  using runtime::CopyEvent;
  constexpr int kExperts = 12, kBytes = 512, kTopK = 3;
  const std::vector<int64_t> slots = {2, 4, 6};
  runtime::SimBackend dev(runtime::parse_sim_device("sim:1MiB"));
  ExpertCache cache(slots, kExperts);
  std::vector<std::vector<uint8_t>> host(slots.size() * kExperts);
  for (size_t i = 0; i < host.size(); ++i) host[i].assign(kBytes, static_cast<uint8_t>(i + 1));
  auto weights = [&](int l, int e) { return host[static_cast<size_t>(l * kExperts + e)].data(); };
  std::vector<runtime::DeviceBuffer> buf;
  for (int64_t n : slots) buf.push_back(dev.allocate(runtime::MemoryClass::ExpertCache, n * kBytes));
  std::map<std::pair<int, int>, CopyEvent> in_flight;  // (layer, slot) -> its copy
  auto start_copy = [&](int l, int slot, int e) {
    EXPECT_EQ(in_flight.count({l, slot}), 0u) << "a second copy into a slot still loading";
    in_flight[{l, slot}] =
        dev.copy_to_device(buf[static_cast<size_t>(l)], int64_t{slot} * kBytes, weights(l, e), kBytes);
  };
  auto land = [&](int l, int slot) {  // the streamer's side: event done -> Ready
    auto it = in_flight.find({l, slot});
    if (it == in_flight.end()) return;
    dev.wait(it->second);
    cache.loaded(l, slot);
    in_flight.erase(it);
  };
  std::mt19937 rng(3);
  auto route = [&] {
    std::vector<int> all(kExperts);
    for (int e = 0; e < kExperts; ++e) all[static_cast<size_t>(e)] = e;
    std::shuffle(all.begin(), all.end(), rng);
    return std::vector<int>(all.begin(), all.begin() + kTopK);
  };
  struct Use {
    int layer, expert, slot;
  };
  std::vector<std::vector<int>> next(slots.size());
  for (auto& n : next) n = route();
  int64_t reads = 0, elsewhere = 0;
  for (int step = 0; step < 300; ++step) {
    std::vector<Use> pinned;
    dev.pause();  // copies stay queued while the compute side looks up
    for (int l = 0; l < static_cast<int>(slots.size()); ++l) {
      for (int e : next[static_cast<size_t>(l)]) {
        const Lookup r = cache.lookup(l, e);
        if (r.kind == LookupKind::NoSlot) {
          ++elsewhere;
          continue;
        }
        if (r.kind == LookupKind::Miss) start_copy(l, r.slot, e);
        pinned.push_back({l, e, r.slot});
      }
      next[static_cast<size_t>(l)] = route();  // the next step's router has chosen
      for (const Fill& f : cache.prefetch(l, next[static_cast<size_t>(l)])) start_copy(l, f.slot, f.expert);
    }
    dev.resume();
    for (const Use& u : pinned) land(u.layer, u.slot);
    // Every queued copy, prefetches included, has landed by now; the kernels of this step read.
    for (const auto& [key, ev] : in_flight) dev.wait(ev);
    for (const Use& u : pinned) {
      const auto* d = static_cast<const uint8_t*>(buf[static_cast<size_t>(u.layer)].data()) + int64_t{u.slot} * kBytes;
      ASSERT_EQ(std::memcmp(d, weights(u.layer, u.expert), kBytes), 0) << "step " << step << " layer " << u.layer;
      ++reads;
      cache.release(u.layer, u.slot);
    }
    if (step % 7 == 0)  // sometimes the streamer catches up before the next step, sometimes not
      while (!in_flight.empty()) land(in_flight.begin()->first.first, in_flight.begin()->first.second);
  }
  EXPECT_GT(reads, 1000);
  EXPECT_GT(elsewhere, 0);  // layer 0 (2 slots, 3 experts per step) runs out
  EXPECT_GT(cache.stats(2).prefetch_fills, 100);
}

TEST(ExpertCache, ConcurrentComputeThreadsKeepExactCounts) {
  constexpr int kThreads = 4, kLookups = 20000;
  ExpertCache cache({4}, 16);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t));
      try {
        for (int i = 0; i < kLookups; ++i) {
          const Lookup r = cache.lookup(0, std::uniform_int_distribution<int>(0, 15)(rng));
          if (r.kind == LookupKind::Miss) cache.loaded(0, r.slot);
          if (r.kind != LookupKind::NoSlot) cache.release(0, r.slot);
        }
      } catch (const Error&) {
        ++failures;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  const CacheStats s = cache.stats(0);
  EXPECT_EQ(s.hits + s.misses, int64_t{kThreads} * kLookups);
  int64_t uses = 0;
  for (int e = 0; e < 16; ++e) uses += cache.uses(0, e);
  EXPECT_EQ(uses, int64_t{kThreads} * kLookups);
  for (int slot = 0; slot < 4; ++slot) {
    EXPECT_EQ(cache.slot_info(0, slot).pins, 0);
    EXPECT_EQ(cache.slot_info(0, slot).state, SlotState::Ready);
  }
}

TEST(ExpertCache, BadInputIsAOneLineErrorNamingTheProblemAndChangesNothing) {
  auto expect_error = [](const std::function<void()>& f, const std::string& part) {
    const std::string e = error_of(f);
    EXPECT_NE(e.find(part), std::string::npos) << "got: '" << e << "', want: " << part;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  expect_error([] { ExpertCache({2, -1}, 4); }, "layer 1 has -1 slots");
  expect_error([] { ExpertCache({5}, 4); }, "layer 0 has 5 slots for 4 experts");
  expect_error([] { ExpertCache({}, -3); }, "experts per layer -3");

  ExpertCache cache({2, 1}, 4);
  expect_error([&] { cache.lookup(2, 0); }, "layer 2 out of range (2 layers)");
  expect_error([&] { cache.lookup(-1, 0); }, "layer -1 out of range");
  expect_error([&] { cache.lookup(0, 4); }, "expert 4 out of range (4 per layer)");
  expect_error([&] { cache.contains(0, -1); }, "expert -1 out of range");
  const std::vector<int> bad_list = {1, 9};
  expect_error([&] { cache.prefetch(0, bad_list); }, "expert 9 out of range");
  EXPECT_FALSE(cache.contains(0, 1));  // the valid expert before the bad one was not filled
  expect_error([&] { cache.release(0, 2); }, "slot 2 out of range (layer 0 has 2)");
  expect_error([&] { cache.release(0, 0); }, "release() of layer 0 slot 0, which is not pinned");
  expect_error([&] { cache.loaded(0, 0); }, "loaded() on layer 0 slot 0, which is free, not loading");
  expect_error([&] { cache.cancel(1, 0); }, "cancel() on layer 1 slot 0, which is free, not loading");

  const Lookup r = cache.lookup(0, 3);
  expect_error([&] { cache.cancel(0, r.slot); }, "which 1 reader(s) still pin");
  cache.loaded(0, r.slot);
  expect_error([&] { cache.loaded(0, r.slot); }, "which is ready, not loading");
  cache.release(0, r.slot);
  expect_error([&] { cache.release(0, r.slot); }, "which is not pinned");
  // None of the refused calls counted anything.
  expect_stats(cache.stats(0), CacheStats{.hits = 0, .misses = 1, .no_slot = 0, .evictions = 0});
  EXPECT_EQ(cache.uses(0, 3), 1);
  const SlotInfo s = cache.slot_info(0, r.slot);
  EXPECT_EQ(s.state, SlotState::Ready);
  EXPECT_EQ(s.pins, 0);
}

TEST(ExpertCache, CancelledCopyFreesTheSlotForTheNextMiss) {
  ExpertCache cache({1}, 4);
  const std::vector<int> chosen = {2};
  const std::vector<Fill> f = cache.prefetch(0, chosen);
  ASSERT_EQ(f.size(), 1u);
  cache.cancel(0, f[0].slot);
  EXPECT_FALSE(cache.contains(0, 2));
  EXPECT_EQ(cache.slot_info(0, 0).state, SlotState::Free);
  const Lookup r = cache.lookup(0, 1);
  EXPECT_EQ(r.kind, LookupKind::Miss);
  EXPECT_EQ(r.evicted, -1);  // a cancelled fill is not an eviction
  EXPECT_EQ(cache.stats(0).evictions, 0);
}

}  // namespace
}  // namespace ferry::offload
