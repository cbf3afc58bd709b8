// runtime/backend/numa_arenas.h: run_on_node runs its function exactly once, before returning, for a node with an
// arena, for no preference (-1) and for a node the process may not run on; a parallel loop inside covers
// every index; a machine with several NUMA nodes gets one arena per node, each as wide as its node.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "runtime/backend/numa_arenas.h"

namespace ferry::runtime {
namespace {

TEST(NumaArenas, OneArenaPerNodeOnlyWhenThereAreSeveral) {
  const std::vector<int> tbb_nodes = tbb_numa_nodes();
  const bool several = tbb_nodes.size() >= 2 && tbb_nodes.front() != tbb::task_arena::automatic;
  EXPECT_EQ(numa_arena_nodes().size(), several ? tbb_nodes.size() : 0u);
  for (const int n : numa_arena_nodes()) {
    int width = 0;
    run_on_node(n, [&] { width = tbb::this_task_arena::max_concurrency(); });
    EXPECT_EQ(width, tbb::info::default_concurrency(n)) << "node " << n;
  }
}

TEST(NumaArenas, RunsTheFunctionOnceBeforeReturning) {
  std::vector<int> nodes = numa_arena_nodes();
  nodes.insert(nodes.end(), {-1, 0, 4095});  // no preference, node 0, a node this machine does not have
  for (const int n : nodes) {
    std::atomic<int> calls{0};
    std::atomic<int64_t> sum{0};
    run_on_node(n, [&] {
      ++calls;
      tbb::parallel_for(0, 1000, [&](int i) { sum += i; });
    });
    EXPECT_EQ(calls.load(), 1) << "node " << n;
    EXPECT_EQ(sum.load(), 999 * 1000 / 2) << "node " << n;
  }
}

TEST(NumaArenas, WithoutAnArenaTheCallerRunsIt) {
  if (!numa_arena_nodes().empty()) GTEST_SKIP() << "several NUMA nodes: node 0 has its own arena";
  const auto caller = std::this_thread::get_id();
  std::thread::id ran;
  run_on_node(0, [&] { ran = std::this_thread::get_id(); });
  EXPECT_EQ(ran, caller);
}

}  // namespace
}  // namespace ferry::runtime
