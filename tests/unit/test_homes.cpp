// The Plan names every routed expert's home (planner/plan.h ExpertHome) and every layer's runs: with several
// nodes, NUMA nodes and GPU budgets, each expert of each layer has exactly one home, each node holds its share,
// the homes give each device exactly the routed-expert bytes its ledger plans, and plan_for_node shows one
// node's devices, runs and homes.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/plan.h"
#include "planner/plan_json.h"
#include "small_v4_config.h"

using namespace ferry;
using namespace ferry::planner;

namespace {

Hardware machine(int nodes, const char* gpu, int64_t ram, int numa = 1) {
  Hardware hw;
  if (gpu) hw.gpus.push_back(parse_gpu_spec(gpu));
  hw.host.ram_bytes = ram;
  hw.host.memory_bandwidth = kDefaultHostBandwidth;
  hw.host.numa_nodes = numa;
  hw.host.cores = kDefaultHostCores;
  hw.host.gflops_per_core = kDefaultGflopsPerCore;
  hw.nodes = nodes;
  hw.gpu_reserve_bytes = gpu ? 64 * core::kMiB : 0;
  hw.host_reserve_bytes = 256 * core::kMiB;
  hw.source = "test";
  return hw;
}

// A small V4 whose 11 experts per layer split unevenly over 3 nodes and 2 NUMA nodes.
ModelSpec tiny_spec() {
  auto j = ferry_test::small_v4_config(11, 1024);
  j["max_position_embeddings"] = 4096;
  return spec_from_config(core::config_from_json(j, "tiny"), ModelSource::ConfigJson, "tiny");
}

PlanOptions at_ctx(int64_t ctx) {
  PlanOptions o;
  o.ctx = ctx;
  return o;
}

// Every invariant of the homes, counted from the ranges themselves (not through check_homes or expert_counts).
void expect_every_expert_homed_once(const Plan& p, const ModelSpec& s) {
  ASSERT_NO_THROW(check_homes(p));
  const int nodes = p.hardware.nodes, numa = p.hardware.host.numa_nodes;
  std::vector<int64_t> device_experts(p.devices.size(), 0);
  std::map<int, std::map<int, int64_t>> per_node;  // layer -> node -> experts held
  int64_t moe_layers = 0;
  for (const LayerPlan& l : p.layers) {
    const int64_t n = s.config.is_moe_layer(l.layer) ? s.layers[size_t(l.layer)].n_experts : 0;
    moe_layers += n > 0;
    std::vector<int> homes(size_t(n), 0);
    for (const ExpertHome& h : l.experts) {
      for (int64_t i = 0; i < h.count; ++i) {
        const int64_t e = h.first + i * h.step;
        ASSERT_LT(e, n) << "layer " << l.layer;
        ++homes[size_t(e)];
      }
      device_experts[size_t(h.device)] += h.count;
      per_node[l.layer][p.devices[size_t(h.device)].node] += h.count;
      if (h.cache >= 0) {
        EXPECT_EQ(p.devices[size_t(h.device)].kind, DeviceKind::Host) << "a resident expert with a cache";
        EXPECT_EQ(p.devices[size_t(h.cache)].kind, DeviceKind::Gpu);
        EXPECT_EQ(p.devices[size_t(h.cache)].node, p.devices[size_t(h.device)].node);
      }
    }
    for (int64_t e = 0; e < n; ++e) ASSERT_EQ(homes[size_t(e)], 1) << "layer " << l.layer << " expert " << e;
    // A layer runs on one device per node (expert parallel) or on one in all (a pipeline).
    ASSERT_EQ(l.runs.size(), p.split == Split::Experts ? size_t(nodes) : 1u) << "layer " << l.layer;
    const int runner = p.devices[size_t(l.runs.front().device)].node;
    // Each node holds its share: sharded, the first n % nodes one more; with Layers all on the runner's node.
    // The planner's counts are the homes'.
    int64_t total = 0;
    for (int node = 0; node < nodes; ++node) {
      const int64_t share =
          p.split == Split::Layers ? (node == runner ? n : 0) : n / nodes + (node < n % nodes ? 1 : 0);
      EXPECT_EQ(per_node[l.layer][node], share) << "layer " << l.layer << " node " << node;
      const ExpertCounts c = expert_counts(p, l, node);
      EXPECT_EQ(c.held, share);
      EXPECT_EQ(c.on_gpu + c.in_ram, c.held);
      total += c.held;
    }
    EXPECT_EQ(total, n);
  }
  EXPECT_GT(moe_layers, 0);
  // The homes give each device exactly the routed-expert bytes its ledger plans; host NUMA nodes share evenly.
  std::map<int, std::vector<int64_t>> numa_share;
  for (size_t i = 0; i < p.devices.size(); ++i) {
    const DevicePlan& d = p.devices[i];
    EXPECT_EQ(d.bytes_of("weights.routed_experts"), device_experts[i] * s.expert_bytes()) << d.id;
    if (d.kind == DeviceKind::Host) numa_share[d.node].push_back(device_experts[i]);
  }
  for (const auto& [node, shares] : numa_share) {
    ASSERT_EQ(shares.size(), size_t(numa));
    EXPECT_LE(*std::max_element(shares.begin(), shares.end()) - *std::min_element(shares.begin(), shares.end()),
              moe_layers)
        << "node " << node << "'s NUMA nodes hold uneven shares";
  }
}

TEST(Homes, ProOnThreeWorkstationsHomesEveryExpertOnce) {
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  const Plan p = make_plan(s, machine(3, "rtx3090", 256 * core::kGiB), PlanOptions{});
  ASSERT_TRUE(p.fits);
  expect_every_expert_homed_once(p, s);
  // Every node's devices and ledgers are in the plan.
  std::set<int> nodes;
  for (const auto& d : p.devices) nodes.insert(d.node);
  EXPECT_EQ(nodes.size(), 3u);
  // Experts in a node's RAM are cached or streamed by a GPU of that node when one runs their layer.
  for (const LayerPlan& l : p.layers)
    for (const ExpertHome& h : l.experts) {
      const DevicePlan& holder = p.devices[size_t(h.device)];
      const LayerRun* run = run_on_node(p, l, holder.node);
      if (holder.kind == DeviceKind::Host) {
        EXPECT_EQ(h.cache, run ? run->device : -1) << "layer " << l.layer << " " << holder.id;
      }
    }
}

TEST(Homes, TinyModelOnThreeNodesWithTwoNumaNodesEach) {
  const ModelSpec s = tiny_spec();
  // CPU only, every expert resident on the GPUs, and GPUs that leave some nodes' experts in RAM; each layout.
  for (const Split split : {Split::Experts, Split::Layers, Split::LayersExperts})
    for (const char* gpu : {static_cast<const char*>(nullptr), "1GiB", "100MiB"}) {
      SCOPED_TRACE(std::string(gpu ? gpu : "cpu only") + ", split " + std::string(split_name(split)));
      PlanOptions o = at_ctx(4096);
      o.split = split;
      const Plan p = make_plan(s, machine(3, gpu, 2 * core::kGiB, 2), o);
      ASSERT_TRUE(p.fits) << (p.shortfalls.empty() ? "" : p.shortfalls[0].detail);
      EXPECT_EQ(p.split, split);
      expect_every_expert_homed_once(p, s);
      int64_t on_gpu = 0, in_ram = 0;
      for (const LayerPlan& l : p.layers)
        for (int n = 0; n < 3; ++n) {
          on_gpu += expert_counts(p, l, n).on_gpu;
          in_ram += expert_counts(p, l, n).in_ram;
        }
      const std::string name = gpu ? gpu : "";
      if (name.empty()) {
        EXPECT_EQ(on_gpu, 0);
      } else if (name == "1GiB") {
        EXPECT_GT(on_gpu, 0);
        // Every expert fits a GPU, but with LayersExperts only the runner's GPU may take a layer's experts: the
        // other nodes' shares stay in their RAM.
        if (split == Split::LayersExperts)
          EXPECT_GT(in_ram, 0);
        else
          EXPECT_EQ(in_ram, 0);
      } else {
        EXPECT_GT(in_ram, 0);
        EXPECT_GT(on_gpu, 0);
      }
    }
}

TEST(Homes, CpuOnlyNodesEachRunEveryLayer) {
  PlanOptions o = at_ctx(4096);
  o.split = Split::Experts;
  const Plan p = make_plan(tiny_spec(), machine(3, nullptr, 2 * core::kGiB), o);
  for (const LayerPlan& l : p.layers) {
    ASSERT_EQ(l.runs.size(), 3u);
    for (int n = 0; n < 3; ++n) {
      const DevicePlan& d = p.devices[size_t(l.runs[size_t(n)].device)];
      EXPECT_EQ(d.node, n);
      EXPECT_EQ(d.kind, DeviceKind::Host);
    }
  }
}

// A pipeline (Layers, LayersExperts): each node owns a contiguous range of whole layers in node order, holds
// their non-routed weights and KV and nothing of the others'; with Layers their experts too. The head goes
// with the last layer, the embedding to node 0, which runs the first.
TEST(Homes, PipelinesGiveEachNodeAContiguousRangeOfLayers) {
  const ModelSpec s = tiny_spec();
  for (const Split split : {Split::Layers, Split::LayersExperts})
    for (const char* gpu : {static_cast<const char*>(nullptr), "100MiB"}) {
      SCOPED_TRACE(std::string(gpu ? gpu : "cpu only") + ", split " + std::string(split_name(split)));
      PlanOptions o = at_ctx(4096);
      o.split = split;
      const Plan p = make_plan(s, machine(3, gpu, 2 * core::kGiB), o);
      ASSERT_TRUE(p.fits);
      std::vector<int> owner;
      for (const LayerPlan& l : p.layers) {
        ASSERT_EQ(l.runs.size(), 1u);
        const DevicePlan& d = p.devices[size_t(l.runs[0].device)];
        EXPECT_EQ(d.kind, gpu ? DeviceKind::Gpu : DeviceKind::Host);
        owner.push_back(d.node);
        for (const ExpertHome& h : l.experts) {
          if (split == Split::Layers) {
            EXPECT_EQ(p.devices[size_t(h.device)].node, d.node) << "layer " << l.layer;
          }
        }
      }
      EXPECT_TRUE(std::is_sorted(owner.begin(), owner.end()));
      EXPECT_EQ(std::set<int>(owner.begin(), owner.end()), (std::set<int>{0, 1, 2})) << "4 layers over 3 nodes";
      EXPECT_EQ(owner.front(), 0);
      // Non-routed weights and KV only where their layer runs.
      for (const DevicePlan& d : p.devices) {
        int64_t want_kv = 0;
        for (size_t i = 0; i < p.layers.size(); ++i)
          if (p.layers[i].runs[0].device == int(&d - p.devices.data()))
            want_kv += kv_total(layer_kv_bytes(s.config, p.layers[i].layer, p.kv_type, 4096));
        int64_t kv = 0;
        for (const auto& [c, b] : d.use)
          if (c.name.rfind("kv.", 0) == 0) kv += b;
        EXPECT_EQ(kv, want_kv) << d.id;
        const bool head = p.layers.back().runs[0].device == int(&d - p.devices.data());
        EXPECT_EQ(d.bytes_of("weights.head") > 0, head) << d.id;
        EXPECT_EQ(d.bytes_of("weights.embedding") > 0, d.node == 0 && d.kind == DeviceKind::Host) << d.id;
      }
    }
}

TEST(Homes, PlanForNodeIsThatNodesDevicesRunsAndHomes) {
  const ModelSpec s = tiny_spec();
  const Plan p = make_plan(s, machine(3, "100MiB", 2 * core::kGiB, 2), at_ctx(4096));
  ASSERT_TRUE(p.fits);
  size_t devices = 0;
  for (int n = 0; n < 3; ++n) {
    const Plan v = plan_for_node(p, n);
    devices += v.devices.size();
    EXPECT_TRUE(v.fits);
    for (const DevicePlan& d : v.devices) {
      EXPECT_EQ(d.node, n);
      const auto same = std::find_if(p.devices.begin(), p.devices.end(), [&](const auto& x) { return x.id == d.id; });
      ASSERT_NE(same, p.devices.end());
      EXPECT_EQ(d.use, same->use) << d.id;
    }
    ASSERT_EQ(v.layers.size(), p.layers.size());
    for (size_t i = 0; i < p.layers.size(); ++i) {
      const LayerPlan &whole = p.layers[i], &mine = v.layers[i];
      // The same experts, on the same devices and caches (by id), as the whole plan's homes on this node.
      auto id = [](const Plan& plan, int device) { return device < 0 ? "" : plan.devices.at(size_t(device)).id; };
      std::set<std::tuple<int64_t, std::string, std::string>> want, got;
      for (const ExpertHome& h : whole.experts)
        if (p.devices[size_t(h.device)].node == n)
          for (int64_t e = h.first; e <= h.last(); e += h.step) want.insert({e, id(p, h.device), id(p, h.cache)});
      for (const ExpertHome& h : mine.experts)
        for (int64_t e = h.first; e <= h.last(); e += h.step) got.insert({e, id(v, h.device), id(v, h.cache)});
      EXPECT_EQ(got, want) << "layer " << whole.layer << " node " << n;
      EXPECT_EQ(expert_counts(v, mine, n).held, expert_counts(p, whole, n).held);
      // This node's run of the layer, and only it, when the whole plan runs the layer here.
      ASSERT_EQ(mine.runs.size(), run_on_node(p, whole, n) ? 1u : 0u) << "layer " << whole.layer << " node " << n;
      for (const LayerRun& r : mine.runs)
        EXPECT_EQ(v.devices.at(size_t(r.device)).id, p.devices[size_t(run_on_node(p, whole, n)->device)].id);
    }
  }
  EXPECT_EQ(devices, p.devices.size());
  EXPECT_THROW(plan_for_node(p, 3), ferry::Error);
  // A one-node plan's view is the plan.
  const Plan one = make_plan(s, machine(1, "100MiB", 2 * core::kGiB, 2), at_ctx(4096));
  EXPECT_EQ(plan_to_json(plan_for_node(one, 0)).dump(), plan_to_json(one).dump());
}

TEST(Homes, APlanIsCheckedAgainstItsModel) {
  const ModelSpec s = tiny_spec();
  const Plan p = make_plan(s, machine(1, "100MiB", 2 * core::kGiB, 2), at_ctx(4096));
  ASSERT_TRUE(p.fits);
  EXPECT_NO_THROW(check_plan_for_model(p, s));
  auto expect_error = [&](const Plan& bad, const std::string& text) {
    try {
      check_plan_for_model(bad, s);
      ADD_FAILURE() << "accepted; expected an error mentioning " << text;
    } catch (const ferry::Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  };
  Plan other = p;
  other.weights_bytes += 1;
  expect_error(other, "made for tiny");
  // An expert moved to the other NUMA node without moving its bytes in the ledgers.
  Plan moved = p;
  ExpertHome& h = moved.layers[1].experts[0];
  ASSERT_EQ(moved.devices[size_t(h.device)].kind, DeviceKind::Host);
  h.device = moved.layers[1].experts[1].device;
  expect_error(moved, "routed experts");
  Plan dropped = p;
  --dropped.layers[1].experts.front().count;  // expert 10 homeless
  expect_error(dropped, "layer 1 homes 10 routed experts, the model has 11");
  Plan over = p;
  over.devices[0].capacity = over.devices[0].used() - 1;
  expect_error(over, "does not fit");
}

// check_homes holds a plan to its split: a pipeline layer on several nodes, an expert parallel layer on one, a
// Layers expert away from its layer's node are refused.
TEST(Homes, HomesAndRunsFollowTheSplit) {
  const ModelSpec s = tiny_spec();
  PlanOptions o = at_ctx(4096);
  o.split = Split::Layers;
  const Plan layers = make_plan(s, machine(3, nullptr, 2 * core::kGiB), o);
  ASSERT_NO_THROW(check_homes(layers));
  auto expect_error = [](const Plan& bad, const std::string& text) {
    try {
      check_homes(bad);
      ADD_FAILURE() << "accepted; expected an error mentioning " << text;
    } catch (const ferry::Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  Plan relabeled = layers;
  relabeled.split = Split::Experts;
  expect_error(relabeled, "plan: layer 0: split experts runs every layer on every node, this one on 1");
  Plan auto_split = layers;
  auto_split.split = Split::Auto;
  expect_error(auto_split, "split is auto");
  // Layer 3 runs on node 2; its experts moved to node 1's host.
  Plan moved = layers;
  LayerPlan& last = moved.layers.back();
  ASSERT_EQ(moved.devices[size_t(last.runs[0].device)].node, 2);
  last.experts[0].device = last.runs[0].device - 1;
  expect_error(moved, "split layers homes a layer's experts on its runner's node 2, these are on node1.host");
  // The same expert move is fine when only the runs are a pipeline.
  moved.split = Split::LayersExperts;
  EXPECT_NO_THROW(check_homes(moved));
  o.split = Split::Experts;
  Plan experts = make_plan(s, machine(3, nullptr, 2 * core::kGiB), o);
  experts.split = Split::LayersExperts;
  expect_error(experts, "split layers+experts runs each layer on one node, this one on 3");
}

}  // namespace
