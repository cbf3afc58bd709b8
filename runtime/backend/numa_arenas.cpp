#include "runtime/backend/numa_arenas.h"

#include <hwloc.h>
#include <tbb/info.h>
#include <tbb/task_arena.h>

#include <algorithm>

#include "planner/core/error.h"

namespace ferry::runtime {

std::vector<int> tbb_numa_nodes() {
#if defined(__SANITIZE_ADDRESS__)
  return {tbb::task_arena::automatic};
#else
  return tbb::info::numa_nodes();
#endif
}

int machine_numa_node(int plan_node) {
  FERRY_CHECK(plan_node >= 0, "NUMA node {} of a plan", plan_node);
  hwloc_topology_t t = nullptr;
  FERRY_CHECK(hwloc_topology_init(&t) == 0, "hwloc: cannot initialise a topology");
  const int loaded = hwloc_topology_load(t);
  const int nodes = loaded == 0 ? std::max(1, hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE)) : 1;
  hwloc_topology_destroy(t);
  FERRY_CHECK(loaded == 0, "hwloc: cannot load the machine's topology");
  return plan_node % nodes;
}

NumaArena::NumaArena(int node) : node_(node) {
  // tbb::info::numa_nodes() is {-1} without tbbbind or topology; one node needs no arena of its own (the default
  // arena already runs on it, and a second arena would only add threads).
  std::vector<int> ids = tbb_numa_nodes();
  // A copy: std::remove takes the value by reference, and oneTBB's library does not define the constant.
  const int no_node = tbb::task_arena::automatic;
  ids.erase(std::remove(ids.begin(), ids.end(), no_node), ids.end());
  if (node < 0 || ids.size() < 2 || std::find(ids.begin(), ids.end(), node) == ids.end()) return;
  // Threads are created on the first execute, not here.
  arena_ = std::make_unique<tbb::task_arena>(tbb::task_arena::constraints(node));
}

NumaArena::~NumaArena() = default;

}  // namespace ferry::runtime
