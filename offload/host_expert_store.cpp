#include "offload/host_expert_store.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <shared_mutex>

#include <hwloc.h>
#include <tbb/parallel_for.h>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/numa_arenas.h"
#include "runtime/model/weight_placement.h"

namespace ferry::offload {

using runtime::MemoryClass;

std::optional<HostExperts> host_experts_from_name(std::string_view name) {
  if (name == "mmap") return HostExperts::Mmap;
  if (name == "numa") return HostExperts::Numa;
  return std::nullopt;
}

std::string_view host_experts_name(HostExperts h) { return h == HostExperts::Numa ? "numa" : "mmap"; }

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// Every live numa store's buffers, for host_expert_node(): a few ranges per store, read once per expert the
// CPU computes, written when a store is made or destroyed.
struct Range {
  const uint8_t* begin;
  const uint8_t* end;
  int node;
};
std::shared_mutex registry_mu;
std::vector<Range> registry;

void unregister(const uint8_t* begin) {
  std::unique_lock lock(registry_mu);
  std::erase_if(registry, [&](const Range& r) { return r.begin == begin; });
}

// The layers whose experts live in host RAM, with every expert there (ExpertDispatch refuses a layer split
// between the GPU and RAM).
std::vector<int64_t> in_ram_layers(const planner::Plan& plan, const runtime::ModelWeights& weights) {
  std::vector<int64_t> layers;
  for (const auto& lp : plan.layers) {
    if (lp.experts_in_ram <= 0) continue;
    FERRY_CHECK(!lp.mtp, "host experts: the MTP layer's experts are not stored yet (run without --mtp)");
    const auto n = static_cast<int64_t>(weights.layer(lp.layer).experts.size());
    FERRY_CHECK(lp.experts_in_ram == n, "plan: layer " + std::to_string(lp.layer) + " keeps " +
                                            std::to_string(lp.experts_in_ram) + " of its " + std::to_string(n) +
                                            " experts in host RAM; the host store takes whole layers");
    layers.push_back(lp.layer);
  }
  return layers;
}

}  // namespace

int host_expert_node(const void* p) {
  const auto* b = static_cast<const uint8_t*>(p);
  std::shared_lock lock(registry_mu);
  for (const Range& r : registry)
    if (b >= r.begin && b < r.end) return r.node;
  return -1;
}

HostExpertStore::HostExpertStore(const planner::Plan& plan, runtime::ModelWeights& weights,
                                 std::span<runtime::Backend* const> hosts, HostExperts mode)
    : mode_(mode), hosts_(hosts.begin(), hosts.end()) {
  FERRY_CHECK(!hosts_.empty(), "host experts: no host backend");
  const size_t n = hosts_.size();
  reserved_.assign(n, 0);
  for (const int64_t l : in_ram_layers(plan, weights)) {
    const auto& experts = weights.layer(l).experts;
    for (size_t e = 0; e < experts.size(); ++e) reserved_[e % n] += runtime::expert_bytes(experts[e]);
  }
  // All ledgers or none: a refusal on node k must not leave nodes before it charged.
  size_t k = 0;
  try {
    for (; k < n; ++k) hosts_[k]->ledger().reserve(MemoryClass::Weights, reserved_[k]);
    if (mode_ == HostExperts::Numa) copy_to_nodes(plan, weights);
  } catch (...) {
    free_regions();
    for (size_t j = 0; j < k; ++j) hosts_[j]->ledger().release(MemoryClass::Weights, reserved_[j]);
    throw;
  }
}

HostExpertStore::~HostExpertStore() {
  // The bound model's views of the copies dangle from here on: BoundPlan destroys its dispatch first.
  free_regions();
  for (size_t k = 0; k < hosts_.size(); ++k) hosts_[k]->ledger().release(MemoryClass::Weights, reserved_[k]);
}

int64_t HostExpertStore::total_bytes() const {
  int64_t t = 0;
  for (const int64_t b : reserved_) t += b;
  return t;
}

void HostExpertStore::free_regions() noexcept {
  auto t = static_cast<hwloc_topology_t>(topology_);
  for (const Region& r : regions_) {
    unregister(r.data);
    hwloc_free(t, const_cast<uint8_t*>(r.data), sz(r.bytes));
  }
  regions_.clear();
  if (t) hwloc_topology_destroy(t);
  topology_ = nullptr;
}

void HostExpertStore::copy_to_nodes(const planner::Plan& plan, runtime::ModelWeights& weights) {
  hwloc_topology_t t = nullptr;
  FERRY_CHECK(hwloc_topology_init(&t) == 0, "host experts: hwloc_topology_init failed");
  topology_ = t;
  FERRY_CHECK(hwloc_topology_load(t) == 0, "host experts: hwloc_topology_load failed");
  const int machine_nodes = std::max(1, hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE));
  const std::vector<int64_t> layers = in_ram_layers(plan, weights);
  const size_t n = hosts_.size();
  bool warned = false;
  for (size_t k = 0; k < n; ++k) {
    if (reserved_[k] == 0) continue;
    const hwloc_obj_t node = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(k % sz(machine_nodes)));
    FERRY_CHECK(node, "host experts: hwloc reports no NUMA node " + std::to_string(k % sz(machine_nodes)));
    Region r;
    r.bytes = reserved_[k];
    r.plan_node = static_cast<int>(k);
    r.machine_node = static_cast<int>(node->logical_index);  // tbb's NUMA id (runtime/backend/numa_arenas.h)
    // Strict: the pages come from this node or the allocation fails, never silently from another node.
    void* p = hwloc_alloc_membind(t, sz(r.bytes), node->nodeset, HWLOC_MEMBIND_BIND,
                                  HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT);
    r.bound = p != nullptr;
    if (!p) {
      if (!warned)
        std::fprintf(stderr,
                     "warning: host experts: the OS refused binding memory to NUMA node %d (%s); using "
                     "first-touch memory written from that node's threads\n",
                     r.machine_node, std::strerror(errno));
      warned = true;
      p = hwloc_alloc(t, sz(r.bytes));
      FERRY_CHECK(p, "host experts: out of memory allocating " + core::format_bytes(r.bytes) + " for NUMA node " +
                         std::to_string(r.machine_node));
    }
    r.data = static_cast<const uint8_t*>(p);
    regions_.push_back(r);
    {
      std::unique_lock lock(registry_mu);
      registry.push_back({r.data, r.data + r.bytes, r.machine_node});
    }

    // This node's experts (e % n == k), packed back to back in layer then expert order, copied and
    // re-pointed in parallel by the node's own threads: with first-touch memory that is what places the
    // pages; with bound memory it keeps the copy's writes local.
    struct Job {
      runtime::ExpertWeights* view;
      runtime::ExpertWeights from;
      uint8_t* to;
    };
    std::vector<Job> jobs;
    auto* base = static_cast<uint8_t*>(p);
    int64_t offset = 0;
    for (const int64_t l : layers) {
      auto& experts = weights.layer_to_place(l).experts;
      for (size_t e = k; e < experts.size(); e += n) {
        jobs.push_back({&experts[e], experts[e], base + offset});
        offset += runtime::expert_bytes(experts[e]);
      }
    }
    FERRY_CHECK(offset == r.bytes, "host experts: node " + std::to_string(k) + " packed " + std::to_string(offset) +
                                       " bytes of " + std::to_string(r.bytes));
    runtime::run_on_node(r.machine_node, [&] {
      tbb::parallel_for(size_t{0}, jobs.size(), [&](size_t i) {
        const Job& j = jobs[i];
        runtime::pack_expert(j.from, j.to);
        *j.view = runtime::expert_in_slot(j.from, j.to);
      });
    });
  }
}

}  // namespace ferry::offload
