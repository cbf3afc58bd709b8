// The host weight store for routed experts the Plan leaves in host RAM (issue 5, item 1). The Plan's expert
// homes (planner/plan.h ExpertHome) say which of its NUMA devices holds each expert, and each device's ledger
// counts those experts' weights; this store makes memory match:
//   - mmap (the default): the experts stay in the checkpoint's mapping, where the page cache put them; each
//     plan node's share is only accounted in that node's ledger.
//   - numa: each plan node's experts are copied into one buffer bound to a machine NUMA node (plan node k on
//     machine node k % machine nodes, so that a plan made with --numa 2 runs on a one-node machine), and the
//     bound model's expert views are re-pointed at the copies. When the OS refuses binding the buffer is
//     first-touch memory written from that node's threads (runtime/backend/numa_arenas.h), with a one-line warning.
//     Plan node k is machine node runtime::machine_numa_node(k), the node the host backend of plan node k computes on.
// The bytes are reserved as MemoryClass::Weights in the ledger of the plan node's host backend, before any
// memory is taken, so that a store larger than the plan is refused.
//
// One buffer per node rather than one per expert: one binding call and one page-rounding per node however many
// experts the model has.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "planner/plan.h"
#include "runtime/backend/backend.h"
#include "runtime/model/model_weights.h"

namespace ferry::offload {

enum class HostExperts { Mmap, Numa };
std::optional<HostExperts> host_experts_from_name(std::string_view name);  // "mmap", "numa"
std::string_view host_experts_name(HostExperts h);

class HostExpertStore {
 public:
  // One buffer of the numa store.
  struct Region {
    const uint8_t* data = nullptr;
    int64_t bytes = 0;
    int plan_node = 0;     // index among the plan's host devices
    int machine_node = 0;  // NUMA node bound to (or first-touched on): hwloc's logical index, tbb's NUMA id
    bool bound = false;    // false: the OS refused binding, first-touch memory
  };

  // `plan` is a one-node plan, or one node's view (planner::plan_for_node). `weights` is the bound model: its experts
  // homed on a host device are re-pointed at the copies (numa). `hosts[k]` is the backend of the plan's k-th host
  // device, in plan order. Throws ferry::Error when a ledger refuses the bytes or memory cannot be had.
  HostExpertStore(const planner::Plan& plan, runtime::ModelWeights& weights, std::span<runtime::Backend* const> hosts,
                  HostExperts mode);
  ~HostExpertStore();
  HostExpertStore(const HostExpertStore&) = delete;
  HostExpertStore& operator=(const HostExpertStore&) = delete;

  HostExperts mode() const { return mode_; }
  std::span<const Region> regions() const { return regions_; }
  // Bytes of in-RAM experts each plan node holds (the ledger's reservation).
  const std::vector<int64_t>& bytes_by_plan_node() const { return reserved_; }
  int64_t total_bytes() const;
  // Per layer, per routed expert: the host device (index among the plan's host devices, `hosts`) its home is,
  // whose backend computes it on the CPU (ExpertDispatch); -1 for an expert held on a GPU. Rows of layers without
  // routed experts are empty.
  const std::vector<std::vector<int>>& host_of_expert() const { return host_of_expert_; }

 private:
  void copy_to_nodes(const planner::Plan& plan, runtime::ModelWeights& weights);
  void fill_host_of_expert(const planner::Plan& plan, int64_t n_layers);
  void free_regions() noexcept;

  HostExperts mode_;
  void* topology_ = nullptr;  // hwloc_topology_t of the numa store: hwloc_free() needs the one that allocated
  std::vector<runtime::Backend*> hosts_;
  std::vector<int64_t> reserved_;
  std::vector<runtime::MemoryLedger::Reservation> reservations_;  // reserved_[k] in hosts_[k]'s ledger
  std::vector<Region> regions_;
  std::vector<int> host_of_device_;  // per plan device: its position among the host devices; -1: a GPU
  std::vector<std::vector<int>> host_of_expert_;
};

}  // namespace ferry::offload
