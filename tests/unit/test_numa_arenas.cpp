// runtime/backend/numa_arenas.h: a NumaArena runs its function exactly once, before returning, for a node with
// its own threads, for no preference (-1) and for a node the process may not run on; a parallel loop inside
// covers every index; on a machine with several NUMA nodes each node's arena is as wide as its node. Plan NUMA
// devices map onto the machine's nodes modulo their number.
#include <gtest/gtest.h>
#include <hwloc.h>

#include <atomic>
#include <thread>

#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "runtime/backend/numa_arenas.h"

namespace ferry::runtime {
namespace {

bool several_tbb_nodes() {
  const std::vector<int> n = tbb_numa_nodes();
  return n.size() >= 2 && n.front() != tbb::task_arena::automatic;
}

TEST(NumaArenas, OwnThreadsOnlyWhenThereAreSeveralNodes) {
  for (const int n : tbb_numa_nodes()) {
    NumaArena arena(n);
    EXPECT_EQ(arena.has_own_threads(), several_tbb_nodes()) << "node " << n;
    if (!arena.has_own_threads()) continue;
    int width = 0;
    arena.execute([&] { width = tbb::this_task_arena::max_concurrency(); });
    EXPECT_EQ(width, tbb::info::default_concurrency(n)) << "node " << n;
  }
}

TEST(NumaArenas, RunsTheFunctionOnceBeforeReturning) {
  std::vector<int> nodes = tbb_numa_nodes();
  nodes.insert(nodes.end(), {-1, 0, 4095});  // no preference, node 0, a node this machine does not have
  for (const int n : nodes) {
    NumaArena arena(n);
    std::atomic<int> calls{0};
    std::atomic<int64_t> sum{0};
    arena.execute([&] {
      ++calls;
      tbb::parallel_for(0, 1000, [&](int i) { sum += i; });
    });
    EXPECT_EQ(calls.load(), 1) << "node " << n;
    EXPECT_EQ(sum.load(), 999 * 1000 / 2) << "node " << n;
  }
}

TEST(NumaArenas, WithoutItsOwnThreadsTheCallerRunsIt) {
  NumaArena arena(several_tbb_nodes() ? 4095 : 0);
  ASSERT_FALSE(arena.has_own_threads());
  const auto caller = std::this_thread::get_id();
  std::thread::id ran;
  arena.execute([&] { ran = std::this_thread::get_id(); });
  EXPECT_EQ(ran, caller);
}

TEST(NumaArenas, PlanNodesMapOntoTheMachinesNodes) {
  hwloc_topology_t t = nullptr;
  ASSERT_EQ(hwloc_topology_init(&t), 0);
  ASSERT_EQ(hwloc_topology_load(t), 0);
  const int nodes = std::max(1, hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE));
  hwloc_topology_destroy(t);
  for (int k = 0; k < 2 * nodes + 1; ++k) EXPECT_EQ(machine_numa_node(k), k % nodes) << "plan node " << k;
}

}  // namespace
}  // namespace ferry::runtime
