// Computing next to the memory: a oneTBB arena whose threads stay on one NUMA node's cores (tbbbind), owned by
// the host backend of that node, so that routed experts bound to a node (offload/host_expert_store.h) are
// computed from local RAM. Node ids are hwloc's logical indexes of the NUMA nodes (tbbbind's numbering, not the
// OS's); a plan's host NUMA device k runs on machine node k modulo the nodes the machine has, so that a plan made
// for more nodes than this machine has still runs here.
#pragma once

#include <tbb/task_arena.h>

#include <memory>
#include <utility>
#include <vector>

namespace ferry::runtime {

// The NUMA node ids oneTBB reports (tbb::info::numa_nodes(): {-1} without tbbbind or a topology). In
// AddressSanitizer builds always {-1}: oneTBB opens tbbbind with RTLD_DEEPBIND, which the sanitizer's runtime
// refuses (it aborts the process), so those builds run without NUMA arenas.
std::vector<int> tbb_numa_nodes();

// The machine NUMA node (hwloc's logical index) a plan's host NUMA device `plan_node` is bound to.
int machine_numa_node(int plan_node);

class NumaArena {
 public:
  // The threads of machine node `node`; -1: no preference. Runs in the caller's arena when oneTBB reports one node
  // or no topology, or when the process may not run on `node`.
  explicit NumaArena(int node = -1);
  ~NumaArena();
  NumaArena(const NumaArena&) = delete;
  NumaArena& operator=(const NumaArena&) = delete;

  int node() const { return node_; }
  bool has_own_threads() const { return arena_ != nullptr; }
  // Runs `f` on the node's threads (tbb::parallel_for inside uses only them) and returns when it has finished.
  template <class F>
  void execute(F&& f) {
    if (arena_)
      arena_->execute(std::forward<F>(f));
    else
      f();
  }

 private:
  int node_;
  std::unique_ptr<tbb::task_arena> arena_;  // null: the caller's arena
};

}  // namespace ferry::runtime
