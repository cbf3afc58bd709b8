// runtime/backend/worker_threads.h: the worker count defaults to the physical cores this process may run on and
// --threads overrides it; a WorkerArena is exactly that wide (the thread index its loops see stays below it); a
// thread computing in it is bound to one core (its slot's), and the calling thread's own binding comes back when
// the arena returns.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include "planner/core/error.h"
#include "runtime/backend/worker_threads.h"

namespace ferry::runtime {
namespace {

cpu_set_t this_thread_affinity() {
  cpu_set_t s;
  CPU_ZERO(&s);
  EXPECT_EQ(pthread_getaffinity_np(pthread_self(), sizeof s, &s), 0);
  return s;
}

TEST(WorkerThreads, DefaultIsThePhysicalCoresAndThreadsOverrides) {
  set_worker_threads(0);
  const int cores = allowed_physical_cores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(cores, static_cast<int>(std::thread::hardware_concurrency()));
  EXPECT_EQ(worker_threads(), cores);
  EXPECT_NE(worker_threads_text().find("one per physical core"), std::string::npos) << worker_threads_text();
  set_worker_threads(cores + 1);
  EXPECT_EQ(worker_threads(), cores + 1);
  EXPECT_EQ(WorkerArena().threads(), cores + 1);
  EXPECT_NE(worker_threads_text().find("--threads"), std::string::npos) << worker_threads_text();
  // Ranks sharing the host: an equal share each, at least one.
  set_worker_threads(0, 1, 2);
  EXPECT_EQ(worker_threads(), std::max(1, cores / 2));
  EXPECT_NE(worker_threads_text().find("this rank's share"), std::string::npos) << worker_threads_text();
  set_worker_threads(0, 2, 3 * cores);
  EXPECT_EQ(worker_threads(), 1);
  set_worker_threads(5, 1, 2);
  EXPECT_EQ(worker_threads(), 5);
  set_worker_threads(0);
  EXPECT_EQ(worker_threads(), cores);
  EXPECT_THROW(set_worker_threads(-1), Error);
  EXPECT_THROW(set_worker_threads(0, 2, 2), Error);
}

TEST(WorkerThreads, AnArenaIsAsWideAsAskedAndItsThreadsEachRunOnOneCore) {
  const int cores = allowed_physical_cores();
  const cpu_set_t before = this_thread_affinity();
  for (const int width : {1, 2, cores}) {
    WorkerArena arena(width);
    std::mutex m;
    std::set<int> slots;
    std::vector<cpu_set_t> bindings;
    int seen_width = 0;
    arena.execute([&] {
      seen_width = tbb::this_task_arena::max_concurrency();
      tbb::parallel_for(0, 4096, [&](int) {
        const int slot = tbb::this_task_arena::current_thread_index();
        const cpu_set_t s = this_thread_affinity();
        std::lock_guard lock(m);
        slots.insert(slot);
        bindings.push_back(s);
      });
    });
    EXPECT_EQ(seen_width, width);
    EXPECT_GE(*slots.begin(), 0);
    EXPECT_LT(*slots.rbegin(), width) << "a slot beyond the arena's width";
    const int allowed = CPU_COUNT(&before);
    // One core's hardware threads: at most allowed / cores of them (SMT siblings), and fewer than all when the
    // process may run on more than one core.
    for (const cpu_set_t& s : bindings) {
      EXPECT_LE(CPU_COUNT(&s), std::max(1, allowed / cores)) << "width " << width;
      if (cores > 1) {
        EXPECT_LT(CPU_COUNT(&s), allowed) << "width " << width;
      }
    }
    const cpu_set_t after = this_thread_affinity();
    EXPECT_TRUE(CPU_EQUAL(&before, &after)) << "the caller's binding did not come back (width " << width << ")";
  }
}

TEST(WorkerThreads, NestedArenasPutEveryBindingBack) {
  const cpu_set_t before = this_thread_affinity();
  WorkerArena outer(2), inner(2);
  cpu_set_t in_outer{}, back_in_outer{};
  outer.execute([&] {
    in_outer = this_thread_affinity();
    inner.execute([&] { tbb::parallel_for(0, 256, [](int) {}); });
    back_in_outer = this_thread_affinity();
  });
  EXPECT_TRUE(CPU_EQUAL(&in_outer, &back_in_outer)) << "leaving the inner arena lost the outer arena's binding";
  const cpu_set_t after = this_thread_affinity();
  EXPECT_TRUE(CPU_EQUAL(&before, &after)) << "the caller's binding did not come back";
}

// A parallel region of two tasks that each wait (up to 10 s) for the other to start, so that two threads take part;
// each records its slot and binding.
void two_threads_meet(std::map<int, std::vector<cpu_set_t>>& bindings_of_slot) {
  std::atomic<int> started = 0;
  std::mutex m;
  tbb::parallel_for(
      tbb::blocked_range<int>(0, 2, 1),
      [&](const tbb::blocked_range<int>&) {
        ++started;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (started < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
        const cpu_set_t s = this_thread_affinity();
        std::lock_guard lock(m);
        bindings_of_slot[tbb::this_task_arena::current_thread_index()].push_back(s);
      },
      tbb::simple_partitioner());
}

// The hot path: a worker joining parallel region after parallel region on the core it is on makes no system call,
// nor does a thread entering an arena at the core it is already bound to; each still runs on its slot's core.
TEST(WorkerThreads, AThreadEnteringTheCoreItIsOnAgainIsNotBoundAgain) {
  set_worker_threads(2);
  const int cores = allowed_physical_cores();
  WorkerArena outer(2), inner(2);
  constexpr int kRegions = 100;
  std::map<int, std::vector<cpu_set_t>> bindings_of_slot;
  const int64_t before = core_bindings();
  outer.execute([&] {
    for (int i = 0; i < kRegions; ++i) {
      inner.execute([&] { two_threads_meet(bindings_of_slot); });
      // Longer than oneTBB keeps a worker waiting in an arena without work (1 ms): it leaves.
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });
  const int64_t made = core_bindings() - before;
  set_worker_threads(0);
  ASSERT_EQ(bindings_of_slot.size(), 2u) << "two threads did not take part";
  ASSERT_EQ(bindings_of_slot[1].size(), static_cast<size_t>(kRegions)) << "a region ran without the worker";
  // The caller once, and each oneTBB worker that ever took slot 1 once.
  EXPECT_LE(made, 1 + static_cast<int64_t>(std::thread::hardware_concurrency()))
      << "bindings for " << kRegions << " regions";
  for (const auto& [slot, bindings] : bindings_of_slot)
    for (const cpu_set_t& s : bindings) EXPECT_TRUE(CPU_EQUAL(&s, &bindings.front())) << "slot " << slot;
  if (cores > 1) {
    EXPECT_FALSE(CPU_EQUAL(&bindings_of_slot[0].front(), &bindings_of_slot[1].front())) << "two slots on one core";
  }
}

}  // namespace
}  // namespace ferry::runtime
