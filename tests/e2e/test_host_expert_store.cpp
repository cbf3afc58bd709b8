// The host expert store on the tiny model (offload/host_expert_store.h): with --host-experts numa each plan
// node's experts are byte-for-byte copies in memory hwloc reports bound to (and placed on) the machine node
// the plan node maps to, each expert on the plan node its home names (expert e of a layer on plan node e % N,
// as the planner deals them); the views point there and nowhere else, and the NUMA node the dispatcher is
// given for each expert is the one its copy is on; the ledgers hold each node's share until the store goes
// and refuse a store larger than the plan, leaving nothing charged. mmap only accounts.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include <hwloc.h>

#include "forward_check.h"
#include "offload/device_plan.h"
#include "offload/host_expert_store.h"
#include "offload/plan_binding.h"
#include "planner/core/error.h"
#include "planner/model_spec.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/model/weight_placement.h"

namespace ferry::testing {
namespace {

using offload::HostExperts;
using offload::HostExpertStore;
using runtime::MemoryClass;

// A plan that leaves every routed expert of the tiny model in host RAM, for `numa` NUMA nodes.
planner::Plan plan_for(int numa) {
  planner::HostSpec h;
  h.ram_bytes = int64_t{64} << 30;
  h.memory_bandwidth = 50e9;
  h.cores = 2;
  h.gflops_per_core = 40;
  h.numa_nodes = numa;
  offload::DeviceRequest req;
  req.name = "sim:20MiB";
  req.capacity = 20 << 20;
  req.cache_slots = 0;
  runtime::SessionOptions so;
  so.ctx = 512;
  so.kv_type = planner::KvType::BF16;
  return offload::plan_for_device(planner::load_model_spec(tiny_model_dir().string()), h, req, so);
}

struct Hosts {
  std::vector<std::unique_ptr<runtime::cpu::CpuBackend>> backends;
  std::vector<runtime::Backend*> ptrs;
  std::vector<int64_t> planned_experts;  // per plan node: the plan's routed-expert bytes

  explicit Hosts(const planner::Plan& plan) {
    for (const auto& d : plan.devices) {
      if (d.kind != planner::DeviceKind::Host) continue;
      backends.push_back(std::make_unique<runtime::cpu::CpuBackend>(d.id, runtime::MemoryLedger::kUnplanned,
                                                                    runtime::machine_numa_node(d.index)));
      offload::set_planned(backends.back()->ledger(), d);
      ptrs.push_back(backends.back().get());
      planned_experts.push_back(d.bytes_of("weights.routed_experts"));
    }
  }
  int64_t weights(size_t k) const { return backends[k]->ledger().usage(MemoryClass::Weights).current; }
};

std::vector<int64_t> in_ram_layers(const planner::Plan& plan) {
  std::vector<int64_t> l;
  for (const auto& lp : plan.layers)
    if (planner::expert_counts(plan, lp, 0).in_ram > 0) l.push_back(lp.layer);
  return l;
}

// The position among the plan's host devices of the device homing expert e of layer l.
int plan_node_of(const planner::Plan& plan, int64_t l, int64_t e) {
  for (const auto& lp : plan.layers) {
    if (lp.layer != l) continue;
    const int device = lp.home_of(e)->device;
    int k = 0;
    for (int i = 0; i < device; ++i) k += plan.devices[static_cast<size_t>(i)].kind == planner::DeviceKind::Host;
    return k;
  }
  return -1;
}

// The one region of `store` that holds all of `e`'s bytes; -1 when none does.
int region_of(const HostExpertStore& store, const runtime::ExpertWeights& e) {
  int found = -2;
  for (const runtime::ByteRange& r : runtime::expert_regions(e)) {
    if (r.bytes == 0) continue;
    int here = -1;
    const auto regions = store.regions();
    for (size_t i = 0; i < regions.size(); ++i)
      if (r.data >= regions[i].data && r.data + r.bytes <= regions[i].data + regions[i].bytes)
        here = static_cast<int>(i);
    if (found != -2 && here != found) return -1;
    found = here;
  }
  return found;
}

class HwlocTopology {
 public:
  HwlocTopology() {
    hwloc_topology_init(&t_);
    hwloc_topology_load(t_);
  }
  ~HwlocTopology() { hwloc_topology_destroy(t_); }
  hwloc_topology_t get() const { return t_; }

 private:
  hwloc_topology_t t_ = nullptr;
};

TEST(HostExpertStore, NumaCopiesAreBoundToTheirNodeAndHoldTheExpertsBytes) {
  const int kPlanNodes = 2;  // more than this one-node machine: both plan nodes bind to machine node 0
  const planner::Plan plan = plan_for(kPlanNodes);
  const runtime::ModelWeights& checkpoint = tiny_model();
  runtime::ModelWeights weights = checkpoint;
  Hosts hosts(plan);
  ASSERT_EQ(hosts.ptrs.size(), size_t{kPlanNodes});
  const std::vector<int64_t> layers = in_ram_layers(plan);
  ASSERT_FALSE(layers.empty());
  {
    HostExpertStore store(plan, weights, hosts.ptrs, HostExperts::Numa);
    ASSERT_EQ(store.regions().size(), size_t{kPlanNodes});
    HwlocTopology topo;
    const hwloc_obj_t node0 = hwloc_get_obj_by_type(topo.get(), HWLOC_OBJ_NUMANODE, 0);
    ASSERT_NE(node0, nullptr);
    for (size_t k = 0; k < store.regions().size(); ++k) {
      const auto& r = store.regions()[k];
      EXPECT_EQ(r.plan_node, static_cast<int>(k));
      EXPECT_EQ(r.machine_node, static_cast<int>(node0->logical_index));
      // The ledger holds the plan's share, exactly.
      EXPECT_EQ(r.bytes, hosts.planned_experts[k]);
      EXPECT_EQ(hosts.weights(k), hosts.planned_experts[k]);
      EXPECT_TRUE(r.bound) << "this machine allows mbind; the store fell back to first touch";

      hwloc_nodeset_t set = hwloc_bitmap_alloc();
      hwloc_membind_policy_t policy{};
      ASSERT_EQ(hwloc_get_area_membind(topo.get(), r.data, static_cast<size_t>(r.bytes), set, &policy,
                                       HWLOC_MEMBIND_BYNODESET),
                0);
      EXPECT_EQ(policy, HWLOC_MEMBIND_BIND);
      EXPECT_TRUE(hwloc_bitmap_isequal(set, node0->nodeset)) << "bound to another nodeset";
      // Where the pages are (they were written by the copy).
      hwloc_bitmap_zero(set);
      ASSERT_EQ(
          hwloc_get_area_memlocation(topo.get(), r.data, static_cast<size_t>(r.bytes), set, HWLOC_MEMBIND_BYNODESET),
          0);
      EXPECT_TRUE(hwloc_bitmap_isequal(set, node0->nodeset)) << "pages on another node";
      hwloc_bitmap_free(set);
    }
    for (const int64_t l : layers) {
      const auto& copies = weights.layer(l).experts;
      const auto& mapped = checkpoint.layer(l).experts;
      ASSERT_EQ(copies.size(), mapped.size());
      for (size_t e = 0; e < copies.size(); ++e) {
        const int k = plan_node_of(plan, l, static_cast<int64_t>(e));
        ASSERT_EQ(k, static_cast<int>(e % kPlanNodes)) << "layer " << l << " expert " << e;
        ASSERT_EQ(region_of(store, copies[e]), k) << "layer " << l << " expert " << e;
        // The host backend the dispatcher gives the expert's tasks: the one of the node whose memory holds it.
        ASSERT_EQ(store.host_of_expert().at(static_cast<size_t>(l)).at(e), k) << "layer " << l << " expert " << e;
        ASSERT_EQ(store.regions()[static_cast<size_t>(k)].machine_node, runtime::machine_numa_node(k));
        const auto want = runtime::expert_regions(mapped[e]);
        const auto got = runtime::expert_regions(copies[e]);
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_EQ(got[i].bytes, want[i].bytes);
          ASSERT_EQ(std::memcmp(got[i].data, want[i].data, static_cast<size_t>(want[i].bytes)), 0)
              << "layer " << l << " expert " << e << " region " << i;
        }
      }
    }
  }
  for (size_t k = 0; k < hosts.ptrs.size(); ++k) EXPECT_EQ(hosts.weights(k), 0) << "the store left bytes charged";
}

TEST(HostExpertStore, MmapOnlyAccountsEachNodesShare) {
  const planner::Plan plan = plan_for(2);
  runtime::ModelWeights weights = tiny_model();
  Hosts hosts(plan);
  const std::vector<int64_t> layers = in_ram_layers(plan);
  ASSERT_FALSE(layers.empty());
  const void* before = weights.layer(layers.front()).experts.front().w1.data;
  {
    HostExpertStore store(plan, weights, hosts.ptrs, HostExperts::Mmap);
    EXPECT_TRUE(store.regions().empty());
    EXPECT_EQ(weights.layer(layers.front()).experts.front().w1.data, before) << "mmap moved an expert";
    for (const int64_t l : layers)
      for (size_t e = 0; e < store.host_of_expert().at(static_cast<size_t>(l)).size(); ++e)
        EXPECT_EQ(store.host_of_expert()[static_cast<size_t>(l)][e], plan_node_of(plan, l, static_cast<int64_t>(e)))
            << "layer " << l << " expert " << e;
    for (size_t k = 0; k < hosts.ptrs.size(); ++k) {
      EXPECT_GT(hosts.planned_experts[k], 0);
      EXPECT_EQ(hosts.weights(k), hosts.planned_experts[k]);
    }
  }
  for (size_t k = 0; k < hosts.ptrs.size(); ++k) EXPECT_EQ(hosts.weights(k), 0);
}

TEST(HostExpertStore, AStoreBeyondThePlanIsRefusedAndChargesNothing) {
  const planner::Plan plan = plan_for(2);
  runtime::ModelWeights weights = tiny_model();
  Hosts hosts(plan);
  // Node 1's plan one byte short of its experts.
  hosts.backends[1]->ledger().set_planned(MemoryClass::Weights, hosts.planned_experts[1] - 1);
  const void* before = weights.layer(in_ram_layers(plan).front()).experts[1].w1.data;
  try {
    HostExpertStore store(plan, weights, hosts.ptrs, HostExperts::Numa);
    FAIL() << "a store beyond the plan was accepted";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("weights"), std::string::npos) << e.what();
  }
  for (size_t k = 0; k < hosts.ptrs.size(); ++k) EXPECT_EQ(hosts.weights(k), 0) << "a refused store left bytes charged";
  EXPECT_EQ(weights.layer(in_ram_layers(plan).front()).experts[1].w1.data, before);
}

TEST(HostExpertStore, NamesParse) {
  EXPECT_EQ(offload::host_experts_from_name("numa"), HostExperts::Numa);
  EXPECT_EQ(offload::host_experts_from_name("mmap"), HostExperts::Mmap);
  EXPECT_FALSE(offload::host_experts_from_name("pinned").has_value());
}

}  // namespace
}  // namespace ferry::testing
