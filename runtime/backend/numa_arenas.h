// Computing next to the memory: one oneTBB arena per NUMA node, its threads kept on that node's cores
// (tbbbind), so that work on host-resident routed experts bound to a node (offload/host_expert_store.h) reads
// local RAM. Node ids are tbb::info::numa_nodes()'s: hwloc's logical indexes of the NUMA nodes (tbbbind's
// numbering, not the OS's); they are what runtime::ExpertUse::host_node carries.
#pragma once

#include <functional>
#include <vector>

namespace ferry::runtime {

// The NUMA node ids oneTBB reports (tbb::info::numa_nodes(): {-1} without tbbbind or a topology). In
// AddressSanitizer builds always {-1}: oneTBB opens tbbbind with RTLD_DEEPBIND, which the sanitizer's runtime
// refuses (it aborts the process), so those builds run without NUMA arenas.
std::vector<int> tbb_numa_nodes();

// The NUMA nodes this process may run on, as oneTBB sees them; empty when it sees a single node or no
// topology (tbbbind missing), in which case run_on_node() runs everything in the caller's arena.
const std::vector<int>& numa_arena_nodes();

// Runs `f` in the arena of NUMA node `node` and returns when it has finished (tbb::parallel_for inside `f`
// uses that node's threads only). Runs `f` in the caller's arena when `node` is -1 (no preference), when
// oneTBB reports one node or no topology, or when the process may not run on `node`. Thread-safe.
void run_on_node(int node, const std::function<void()>& f);

}  // namespace ferry::runtime
