#include "runtime/backend/numa_arenas.h"

#include <algorithm>
#include <memory>

#include <tbb/info.h>
#include <tbb/task_arena.h>

namespace ferry::runtime {

std::vector<int> tbb_numa_nodes() {
#if defined(__SANITIZE_ADDRESS__)
  return {tbb::task_arena::automatic};
#else
  return tbb::info::numa_nodes();
#endif
}

namespace {

struct Arenas {
  std::vector<int> nodes;
  std::vector<std::unique_ptr<tbb::task_arena>> arenas;  // parallel to `nodes`

  Arenas() {
    // tbb::info::numa_nodes() is {-1} without tbbbind or topology; one node needs no arena of its own (the
    // default arena already runs on it, and a second arena would only add threads).
    std::vector<tbb::numa_node_id> ids = tbb_numa_nodes();
    // A copy: std::remove takes the value by reference, and oneTBB's library does not define the constant.
    const tbb::numa_node_id no_node = tbb::task_arena::automatic;
    ids.erase(std::remove(ids.begin(), ids.end(), no_node), ids.end());
    if (ids.size() < 2) return;
    for (const tbb::numa_node_id id : ids) {
      nodes.push_back(id);
      // Threads are created on the first execute, not here.
      arenas.push_back(std::make_unique<tbb::task_arena>(tbb::task_arena::constraints(id)));
    }
  }
};

Arenas& arenas() {
  static Arenas a;  // thread-safe initialisation; arenas are safe to execute from many threads
  return a;
}

}  // namespace

const std::vector<int>& numa_arena_nodes() { return arenas().nodes; }

void run_on_node(int node, const std::function<void()>& f) {
  Arenas& a = arenas();
  const auto it = std::find(a.nodes.begin(), a.nodes.end(), node);
  if (node < 0 || it == a.nodes.end()) {
    f();
    return;
  }
  a.arenas[static_cast<size_t>(it - a.nodes.begin())]->execute(f);
}

}  // namespace ferry::runtime
