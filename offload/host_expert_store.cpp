#include "offload/host_expert_store.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <hwloc.h>
#include <tbb/parallel_for.h>

#include "planner/core/error.h"
#include "planner/core/log.h"
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

// The layers with experts homed on a host device.
std::vector<int64_t> in_ram_layers(const planner::Plan& plan, const std::vector<int>& host_of_device) {
  std::vector<int64_t> layers;
  for (const auto& lp : plan.layers) {
    const bool in_ram = std::any_of(lp.experts.begin(), lp.experts.end(),
                                    [&](const planner::ExpertHome& h) { return host_of_device[sz(h.device)] >= 0; });
    if (!in_ram) continue;
    FERRY_CHECK(!lp.mtp, "host experts: the MTP layer's experts are not stored yet (run without --mtp)");
    layers.push_back(lp.layer);
  }
  return layers;
}

// The host device (position among the plan's host devices) holding expert e of `lp`; -1: a GPU, or another
// node's device (not in a node's view of the plan).
int host_device_of(const planner::LayerPlan& lp, int64_t e, const std::vector<int>& host_of_device) {
  const planner::ExpertHome* h = lp.home_of(e);
  return h ? host_of_device[sz(h->device)] : -1;
}

const planner::LayerPlan& layer_plan(const planner::Plan& plan, int64_t layer) {
  for (const auto& lp : plan.layers)
    if (lp.layer == layer) return lp;
  FERRY_THROW("plan: no layer {}", layer);
}

}  // namespace

HostExpertStore::HostExpertStore(const planner::Plan& plan, runtime::ModelWeights& weights,
                                 std::span<runtime::Backend* const> hosts, HostExperts mode)
    : mode_(mode), hosts_(hosts.begin(), hosts.end()) {
  FERRY_CHECK(!hosts_.empty(), "host experts: no host backend");
  const size_t n = hosts_.size();
  int host_devices = 0;
  for (const auto& d : plan.devices)
    host_of_device_.push_back(d.kind == planner::DeviceKind::Host ? host_devices++ : -1);
  FERRY_CHECK(sz(host_devices) == n, "host experts: the plan has {} host devices, the store was given {} backends",
              host_devices, n);
  reserved_.assign(n, 0);
  for (const int64_t l : in_ram_layers(plan, host_of_device_)) {
    const auto& experts = weights.layer(l).experts;
    const planner::LayerPlan& lp = layer_plan(plan, l);
    for (size_t e = 0; e < experts.size(); ++e)
      if (const int k = host_device_of(lp, static_cast<int64_t>(e), host_of_device_); k >= 0)
        reserved_[sz(k)] += runtime::expert_bytes(experts[e]);
  }
  // All ledgers or none: a refusal on node k releases the nodes before it as the reservations go.
  for (size_t k = 0; k < n; ++k) reservations_.emplace_back(hosts_[k]->ledger(), MemoryClass::Weights, reserved_[k]);
  try {
    if (mode_ == HostExperts::Numa) copy_to_nodes(plan, weights);
  } catch (...) {
    free_regions();
    throw;
  }
  fill_host_of_expert(plan, weights.config().n_layers_total());
}

// The bound model's views of the copies dangle from here on: BoundPlan destroys its dispatch first. The ledgers'
// bytes go with the reservations.
HostExpertStore::~HostExpertStore() { free_regions(); }

int64_t HostExpertStore::total_bytes() const {
  int64_t t = 0;
  for (const int64_t b : reserved_) t += b;
  return t;
}

void HostExpertStore::free_regions() noexcept {
  auto t = static_cast<hwloc_topology_t>(topology_);
  for (const Region& r : regions_) {
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
  const std::vector<int64_t> layers = in_ram_layers(plan, host_of_device_);
  const size_t n = hosts_.size();
  bool warned = false;
  for (size_t k = 0; k < n; ++k) {
    if (reserved_[k] == 0) continue;
    const int machine_node = runtime::machine_numa_node(static_cast<int>(k));
    const hwloc_obj_t node = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(machine_node));
    FERRY_CHECK(node, "host experts: hwloc reports no NUMA node {}", machine_node);
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
        core::logger().warn(
            "host experts: the OS refused binding memory to NUMA node {} ({}); using first-touch memory written from "
            "that node's threads",
            r.machine_node, std::strerror(errno));
      warned = true;
      p = hwloc_alloc(t, sz(r.bytes));
      FERRY_CHECK(p, "host experts: out of memory allocating {} for NUMA node {}", core::format_bytes(r.bytes),
                  r.machine_node);
    }
    r.data = static_cast<const uint8_t*>(p);
    regions_.push_back(r);

    // This node's experts (homed on its host device), packed back to back in layer then expert order, copied and
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
      const planner::LayerPlan& lp = layer_plan(plan, l);
      for (size_t e = 0; e < experts.size(); ++e) {
        if (host_device_of(lp, static_cast<int64_t>(e), host_of_device_) != static_cast<int>(k)) continue;
        jobs.push_back({&experts[e], experts[e], base + offset});
        offset += runtime::expert_bytes(experts[e]);
      }
    }
    FERRY_CHECK(offset == r.bytes, "host experts: node {} packed {} bytes of {}", k, offset, r.bytes);
    runtime::NumaArena(r.machine_node).execute([&] {
      tbb::parallel_for(size_t{0}, jobs.size(), [&](size_t i) {
        const Job& j = jobs[i];
        runtime::pack_expert(j.from, j.to);
        *j.view = runtime::expert_in_slot(j.from, j.to);
      });
    });
  }
}

void HostExpertStore::fill_host_of_expert(const planner::Plan& plan, int64_t n_layers) {
  host_of_expert_.assign(sz(n_layers), {});
  for (const auto& lp : plan.layers) {
    std::vector<int>& row = host_of_expert_.at(sz(lp.layer));
    for (const planner::ExpertHome& h : lp.experts) row.resize(std::max(row.size(), sz(h.last() + 1)), -1);
    for (size_t e = 0; e < row.size(); ++e) row[e] = host_device_of(lp, static_cast<int64_t>(e), host_of_device_);
  }
}

}  // namespace ferry::offload
