// The placement solver (DESIGN.md §1): non-routed weights, KV cache and indexer cache on the GPU(s) first,
// then workspaces, then the remaining VRAM to whole layers' experts or a GPU expert cache; routed experts in
// host RAM split across NUMA nodes, and with --nodes spread over the nodes as the Split says: sharded
// (Experts, LayersExperts) or with their layer's owner (Layers).
#include <algorithm>
#include <map>
#include <numeric>
#include <string>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/memory.h"
#include "planner/plan.h"

namespace ferry::planner {

void DevicePlan::add(const UseClass& cls, int64_t bytes) {
  if (bytes == 0) return;
  for (auto& [c, b] : use)
    if (c == cls) {
      b += bytes;
      return;
    }
  use.emplace_back(cls, bytes);
}

int64_t DevicePlan::used() const {
  int64_t s = 0;
  for (const auto& [c, b] : use) s += b;
  return s;
}

int64_t DevicePlan::bytes_of(std::string_view cls) const {
  for (const auto& [c, b] : use)
    if (c.name == cls) return b;
  return 0;
}

namespace {

// Items of sizes `fp`, in order, as contiguous ranges over bins of `room`: proportional to each bin's room,
// or, when that overflows a bin, filling the bins in order. Returns each item's bin; whether everything fits
// is the devices' ledgers' to say.
std::vector<int> split_by_room(const std::vector<int64_t>& room, const std::vector<int64_t>& fp) {
  const size_t n = room.size();
  const int64_t total = std::accumulate(fp.begin(), fp.end(), int64_t{0});
  auto check = [&](const std::vector<int>& owner) {
    std::vector<int64_t> sum(n, 0);
    for (size_t i = 0; i < owner.size(); ++i) sum[static_cast<size_t>(owner[i])] += fp[i];
    for (size_t i = 0; i < n; ++i)
      if (sum[i] > room[i]) return false;
    return true;
  };

  std::vector<int> proportional(fp.size());
  const double room_total = std::max<double>(1, std::accumulate(room.begin(), room.end(), 0.0, [](double a, int64_t r) {
                                               return a + std::max<int64_t>(r, 0);
                                             }));
  int64_t assigned = 0;
  size_t d = 0;
  double target = total * (std::max<int64_t>(room[0], 0) / room_total);
  for (size_t i = 0; i < fp.size(); ++i) {
    while (d + 1 < n && assigned + fp[i] / 2 > target) {
      ++d;
      target += total * (std::max<int64_t>(room[d], 0) / room_total);
    }
    proportional[i] = static_cast<int>(d);
    assigned += fp[i];
  }
  if (check(proportional)) return proportional;

  std::vector<int> greedy(fp.size());
  std::vector<int64_t> left = room;
  d = 0;
  for (size_t i = 0; i < fp.size(); ++i) {
    while (d + 1 < n && fp[i] > left[d]) ++d;
    greedy[i] = static_cast<int>(d);
    left[d] -= fp[i];
  }
  return check(greedy) ? greedy : proportional;
}

class Placer {
 public:
  // `borrow`: the GPU keeps the workspace of options.resident_chunk tokens, and a prefill chunk's workspace
  // borrows its expert cache (lend_cache_to_prefill).
  Placer(const ModelSpec& s, const Hardware& hw, const PlanOptions& o, KvType kv, Split split, Plan& plan, bool borrow)
      : s_(s), c_(s.config), hw_(hw), o_(o), kv_(kv), split_(split), plan_(plan), borrow_(borrow) {}

  // Whether every GPU's expert cache holds the prefill chunk's workspace, each GPU's borrow recorded; false
  // (nothing recorded) when one's does not.
  bool lend_cache_to_prefill() {
    const int64_t chunk = workspace_bytes(o_.ubatch);
    for (const DevicePlan& d : plan_.devices)
      if (d.kind == DeviceKind::Gpu && d.bytes_of(use_class(Pool::ExpertCache).name) < chunk) return false;
    for (DevicePlan& d : plan_.devices)
      if (d.kind == DeviceKind::Gpu) d.prefill_borrowed = chunk;
    return true;
  }

  void run() {
    make_devices();
    for (int64_t l = 0; l < c_.n_layers_total(); ++l)
      if (!c_.is_mtp_layer(l) || o_.mtp) layers_.push_back(static_cast<int>(l));
    if (gpus_per_node() == 0 && split_ == Split::Experts)
      place_cpu_only();
    else if (gpus_per_node() == 0)
      place_cpu_pipeline();
    else if (split_ == Split::Experts)
      place_replicated();
    else if (split_ == Split::LayersExperts)
      place_gpu_pipeline();
    else
      place_node_stages();
    place_experts();
    finish();
  }

 private:
  int gpus_per_node() const { return static_cast<int>(hw_.gpus.size()); }
  int numa() const { return std::max(1, hw_.host.numa_nodes); }
  int gpu_device(int node, int g) const { return node * (gpus_per_node() + numa()) + g; }
  int host_device(int node, int k) const { return node * (gpus_per_node() + numa()) + gpus_per_node() + k; }

  void make_devices() {
    for (int n = 0; n < hw_.nodes; ++n) {
      const std::string prefix = hw_.nodes > 1 ? "node" + std::to_string(n) + "." : "";
      for (int g = 0; g < gpus_per_node(); ++g) {
        DevicePlan d;
        d.id = prefix + "gpu" + std::to_string(g);
        d.kind = DeviceKind::Gpu;
        d.node = n;
        d.index = g;
        d.name = hw_.gpus[static_cast<size_t>(g)].name;
        d.capacity = hw_.gpus[static_cast<size_t>(g)].free_bytes;
        d.add(use_class(Pool::Reserve), hw_.gpu_reserve_bytes);
        plan_.devices.push_back(std::move(d));
      }
      for (int k = 0; k < numa(); ++k) {
        DevicePlan d;
        d.id = prefix + (numa() > 1 ? "host.numa" + std::to_string(k) : std::string("host"));
        d.kind = DeviceKind::Host;
        d.node = n;
        d.index = k;
        d.name = numa() > 1 ? "host RAM, NUMA " + std::to_string(k) : "host RAM";
        // RAM and the OS reserve split evenly; the first NUMA node takes the remainder.
        d.capacity = hw_.host.ram_bytes / numa() + (k == 0 ? hw_.host.ram_bytes % numa() : 0);
        d.add(use_class(Pool::Reserve), hw_.host_reserve_bytes / numa());
        plan_.devices.push_back(std::move(d));
      }
    }
  }

  int64_t ctx() const { return plan_.options.ctx; }

  // The forward pass's workspace for chunks of `chunk` tokens (at most the context).
  int64_t workspace_bytes(int64_t chunk) const {
    const int64_t threads = o_.threads > 0 ? o_.threads : std::max(1, hw_.host.cores);
    return forward_workspace_bytes(c_, kv_, std::min(chunk, ctx()), threads, o_.mtp, o_.logits_all);
  }
  int64_t workspace_bytes() const { return workspace_bytes(o_.ubatch); }

  KvBytes layer_kv(int l) const {
    KvBytes b = layer_kv_bytes(c_, l, kv_, ctx());
    for (auto& x : b) x *= o_.parallel;
    return b;
  }

  // Host bytes of the layer's prefix-reuse snapshots, every sequence's.
  int64_t snapshots(int l) const { return o_.snapshot_keep * o_.parallel * layer_snapshot_bytes(c_, l, kv_, ctx()); }

  int64_t footprint(int l) const { return s_.layers[static_cast<size_t>(l)].non_routed() + kv_total(layer_kv(l)); }

  // Final norm, output head and head mixing: everything global but the embedding, which stays in host RAM
  // (one row is read per token; keeping 1-2 GiB of it in VRAM would only take room from the expert cache).
  int64_t head_bytes() const {
    int64_t b = 0;
    for (size_t k = 0; k < core::kNumWeightClasses; ++k)
      if (k != static_cast<size_t>(core::WeightClass::Embedding)) b += s_.global[k];
    return b;
  }

  void put_layer(int l, DevicePlan& d) {
    const auto& w = s_.layers[static_cast<size_t>(l)];
    for (size_t k = 0; k < core::kNumWeightClasses; ++k)
      if (k != static_cast<size_t>(core::WeightClass::RoutedExpert))
        d.add(use_class(static_cast<core::WeightClass>(k)), w.bytes[k]);
    const KvBytes kv = layer_kv(l);
    for (size_t k = 0; k < kNumKvKinds; ++k) d.add(use_class(static_cast<KvKind>(k)), kv[k]);
    // The layer's snapshots stay in the RAM of the node that computes it, whichever device holds its cache.
    if (o_.snapshot_keep > 0)
      plan_.devices[static_cast<size_t>(host_device(d.node, 0))].add(use_class(Pool::Snapshots), snapshots(l));
  }

  void put_head(DevicePlan& d) {
    for (size_t k = 0; k < core::kNumWeightClasses; ++k)
      if (k != static_cast<size_t>(core::WeightClass::Embedding))
        d.add(use_class(static_cast<core::WeightClass>(k)), s_.global[k]);
  }

  void put_embedding(int node) {
    plan_.devices[static_cast<size_t>(host_device(node, 0))].add(
        use_class(core::WeightClass::Embedding), s_.global[static_cast<size_t>(core::WeightClass::Embedding)]);
  }

  void place_cpu_only() {
    for (int n = 0; n < hw_.nodes; ++n) {
      auto& host = plan_.devices[static_cast<size_t>(host_device(n, 0))];
      for (int l : layers_) put_layer(l, host);
      put_head(host);
      host.add(use_class(Pool::Workspace), workspace_bytes());
      put_embedding(n);
    }
    plan_.layout = "CPU only: every layer and the KV cache in host RAM";
    if (hw_.nodes > 1)
      plan_.layout += ", replicated on " + std::to_string(hw_.nodes) + " nodes, experts sharded across them";
  }

  // Contiguous ranges of `layers` over `gpus` (device indices), proportional to each GPU's free room, the head
  // on the last with `head`. Returns the index into `gpus` of each layer's owner.
  std::vector<int> split(const std::vector<int>& gpus, const std::vector<int>& layers, bool head) const {
    std::vector<int64_t> room(gpus.size());
    for (size_t i = 0; i < gpus.size(); ++i) {
      const auto& d = plan_.devices[static_cast<size_t>(gpus[i])];
      room[i] = d.capacity - d.used() - gpu_fixed_;
    }
    if (head) room.back() -= head_bytes();
    std::vector<int64_t> fp(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) fp[i] = footprint(layers[i]);
    return split_by_room(room, fp);
  }

  std::vector<int> node_gpus(int node) const {
    std::vector<int> gpus;
    for (int g = 0; g < gpus_per_node(); ++g) gpus.push_back(gpu_device(node, g));
    return gpus;
  }

  void set_gpu_fixed() {
    gpu_fixed_ = workspace_bytes(borrow_ ? o_.resident_chunk : o_.ubatch);
    if (s_.expert_bytes() > 0) gpu_fixed_ += expert_stream_slot_bytes(s_);
  }

  // Every node runs every layer, on the GPU of node 0's split with the same index.
  void place_replicated() {
    const int G = gpus_per_node();
    set_gpu_fixed();
    const std::vector<int> owner = split(node_gpus(0), layers_, true);
    for (int n = 0; n < hw_.nodes; ++n) {
      for (size_t i = 0; i < layers_.size(); ++i) {
        const int dev = gpu_device(n, owner[i]);
        put_layer(layers_[i], plan_.devices[static_cast<size_t>(dev)]);
        if (n == 0) owner_[layers_[i]] = dev;
      }
      put_head(plan_.devices[static_cast<size_t>(gpu_device(n, G - 1))]);
      for (int g = 0; g < G; ++g)
        plan_.devices[static_cast<size_t>(gpu_device(n, g))].add(use_class(Pool::Workspace),
                                                                 gpu_fixed_ - stream_part());
      put_embedding(n);
    }
    const int used_gpus = owner.empty() ? 1 : owner.back() + 1;
    plan_.layout = used_gpus == 1 ? "non-routed layers, KV cache and head on one GPU"
                                  : "non-routed layers split over " + std::to_string(used_gpus) +
                                        " GPUs by layer range (pipeline)";
    if (hw_.nodes > 1)
      plan_.layout += "; replicated on " + std::to_string(hw_.nodes) +
                      " nodes, routed experts sharded across them (expert parallel)";
  }

  // Each planned layer on its owner device and the head with the last layer's (the runtime computes it there).
  // The embedding is node 0's, which runs the first layer.
  void put_pipeline(const std::vector<int>& owner_device) {
    for (size_t i = 0; i < layers_.size(); ++i) {
      put_layer(layers_[i], plan_.devices[static_cast<size_t>(owner_device[i])]);
      owner_[layers_[i]] = owner_device[i];
    }
    put_head(plan_.devices[static_cast<size_t>(owner_device.back())]);
  }

  void add_gpu_workspaces() {
    for (int n = 0; n < hw_.nodes; ++n)
      for (int dev : node_gpus(n))
        plan_.devices[static_cast<size_t>(dev)].add(use_class(Pool::Workspace), gpu_fixed_ - stream_part());
  }

  // LayersExperts: the non-routed layers over every node's GPUs by layer range.
  void place_gpu_pipeline() {
    set_gpu_fixed();
    put_embedding(0);
    std::vector<int> all_gpus;
    for (int n = 0; n < hw_.nodes; ++n)
      for (int dev : node_gpus(n)) all_gpus.push_back(dev);
    const std::vector<int> owner = split(all_gpus, layers_, true);
    std::vector<int> owner_device(layers_.size());
    for (size_t i = 0; i < layers_.size(); ++i) owner_device[i] = all_gpus[static_cast<size_t>(owner[i])];
    put_pipeline(owner_device);
    add_gpu_workspaces();
    const int stages = owner.back() + 1;
    plan_.layout = "pipeline over " + std::to_string(stages) + " GPUs on " + std::to_string(hw_.nodes) +
                   " nodes (non-routed layers split by layer range), routed experts sharded across the nodes' RAM";
  }

  // Host bytes a node needs besides weights when it holds routed experts in RAM: the CPU expert path's buffers
  // and, with GPUs, the pinned staging of expert copies.
  int64_t host_expert_fixed() const {
    if (s_.expert_bytes() == 0) return 0;
    return cpu_expert_workspace_bytes(c_, o_.ubatch) + (gpus_per_node() > 0 ? pinned_staging_bytes(s_) : 0);
  }

  int64_t routed_bytes(int l) const {
    return c_.is_moe_layer(l) ? s_.layers[static_cast<size_t>(l)].n_experts * s_.expert_bytes() : 0;
  }

  // Layers: the layers over the nodes by each node's room (its GPUs' and RAM's together, for a layer's
  // non-routed part and its experts), then a node's layers over its GPUs.
  void place_node_stages() {
    set_gpu_fixed();
    put_embedding(0);
    std::vector<int64_t> room(static_cast<size_t>(hw_.nodes));
    for (int n = 0; n < hw_.nodes; ++n) {
      room[static_cast<size_t>(n)] = host_free(n) - host_expert_fixed();
      for (int dev : node_gpus(n)) {
        const auto& d = plan_.devices[static_cast<size_t>(dev)];
        room[static_cast<size_t>(n)] += d.capacity - d.used() - gpu_fixed_;
      }
    }
    room.back() -= head_bytes();
    std::vector<int64_t> fp(layers_.size());
    for (size_t i = 0; i < layers_.size(); ++i) fp[i] = footprint(layers_[i]) + routed_bytes(layers_[i]) + snapshots(layers_[i]);
    const std::vector<int> node_of = split_by_room(room, fp);
    std::vector<int> owner_device(layers_.size());
    for (int n = 0; n < hw_.nodes; ++n) {
      std::vector<int> mine;
      for (size_t i = 0; i < layers_.size(); ++i)
        if (node_of[i] == n) mine.push_back(layers_[i]);
      const std::vector<int> gpus = node_gpus(n);
      const std::vector<int> owner = split(gpus, mine, n == node_of.back());
      for (size_t i = 0, j = 0; i < layers_.size(); ++i)
        if (node_of[i] == n) owner_device[i] = gpus[static_cast<size_t>(owner[j++])];
    }
    put_pipeline(owner_device);
    add_gpu_workspaces();
    plan_.layout = "pipeline over " + std::to_string(hw_.nodes) +
                   " nodes, each owning a range of whole layers with their routed experts (on its GPUs or in its RAM)";
  }

  // CPU only, Layers or LayersExperts: the non-routed layers a pipeline over the nodes' hosts, split by each
  // node's room; with Layers a layer's experts go with it.
  void place_cpu_pipeline() {
    for (int n = 0; n < hw_.nodes; ++n)
      plan_.devices[static_cast<size_t>(host_device(n, 0))].add(use_class(Pool::Workspace), workspace_bytes());
    put_embedding(0);
    const bool with_experts = split_ == Split::Layers;
    std::vector<int64_t> room(static_cast<size_t>(hw_.nodes));
    for (int n = 0; n < hw_.nodes; ++n) {
      room[static_cast<size_t>(n)] = host_free(n) - host_expert_fixed();
      if (!with_experts)
        for (int l : layers_)
          if (routed_bytes(l) > 0) room[static_cast<size_t>(n)] -= experts_on_node(l, n) * s_.expert_bytes();
    }
    room.back() -= head_bytes();
    std::vector<int64_t> fp(layers_.size());
    for (size_t i = 0; i < layers_.size(); ++i)
      fp[i] = footprint(layers_[i]) + snapshots(layers_[i]) + (with_experts ? routed_bytes(layers_[i]) : 0);
    const std::vector<int> node_of = split_by_room(room, fp);
    std::vector<int> owner_device(layers_.size());
    for (size_t i = 0; i < layers_.size(); ++i) owner_device[i] = host_device(node_of[i], 0);
    put_pipeline(owner_device);
    plan_.layout = "CPU only: a pipeline over " + std::to_string(hw_.nodes) + " nodes by layer range, " +
                   (with_experts ? "each layer's routed experts in its owner's RAM"
                                 : "routed experts sharded across the nodes' RAM");
  }

  int64_t stream_part() const { return s_.expert_bytes() > 0 ? expert_stream_slot_bytes(s_) : 0; }

  // Routed experts of layer l homed on node n: with Layers all on the layer's owner node; otherwise each node a
  // contiguous block, the first e % nodes one more.
  int64_t experts_on_node(int l, int n) const {
    const int64_t e = s_.layers[static_cast<size_t>(l)].n_experts;
    if (split_ == Split::Layers) return plan_.devices[static_cast<size_t>(owner_.at(l))].node == n ? e : 0;
    return e / hw_.nodes + (n < e % hw_.nodes ? 1 : 0);
  }

  int64_t host_free(int node) const {
    int64_t f = 0;
    for (int k = 0; k < numa(); ++k) {
      const auto& d = plan_.devices[static_cast<size_t>(host_device(node, k))];
      f += d.capacity - d.used();
    }
    return f;
  }

  using PerNode = std::vector<std::vector<int64_t>>;  // [node][layer]

  // Which layers keep their experts resident on the GPU that runs them for a node, and how many GPU
  // expert-cache slots the others get there, from the VRAM each GPU has left.
  void choose_gpu_experts(const std::vector<int>& moe, PerNode& resident, PerNode& slots) const {
    const int64_t eb = s_.expert_bytes();
    for (int n = 0; n < hw_.nodes && gpus_per_node() > 0; ++n) {
      // RAM the node still needs for its experts, the CPU path's buffers and pinned staging.
      int64_t host_need = cpu_expert_workspace_bytes(c_, o_.ubatch) + pinned_staging_bytes(s_);
      for (int l : moe) host_need += experts_on_node(l, n) * eb;
      int64_t host_short = host_need - host_free(n);
      for (int g = 0; g < gpus_per_node(); ++g) {
        const int dev = gpu_device(n, g);
        std::vector<int> hosted;
        for (int l : moe)
          if (gpu_of_layer_on_node(l, n) == dev) hosted.push_back(l);
        if (hosted.empty()) continue;
        const auto& d = plan_.devices[static_cast<size_t>(dev)];
        int64_t leftover = d.capacity - d.used();
        int64_t all = 0;
        for (int l : hosted) all += experts_on_node(l, n) * eb;
        if (all <= leftover) {
          // Every hosted layer's experts fit: no host copy and no streaming through this GPU.
          for (int l : hosted) resident[n][l] = experts_on_node(l, n);
          continue;
        }
        leftover -= stream_part();  // this GPU will stream: its landing slots come first
        // Host RAM short: move whole layers' experts to the GPU, last layers first, while they fit.
        for (auto it = hosted.rbegin(); it != hosted.rend() && host_short > 0; ++it) {
          const int64_t b = experts_on_node(*it, n) * eb;
          if (b > leftover) break;
          resident[n][*it] = experts_on_node(*it, n);
          leftover -= b;
          host_short -= b;
        }
        std::vector<int> cached;
        for (int l : hosted)
          if (resident[n][l] == 0) cached.push_back(l);
        if (cached.empty()) continue;
        int64_t per_layer = 0;
        if (o_.expert_cache == ExpertCacheMode::Auto && eb > 0)
          per_layer = std::max<int64_t>(0, leftover) / (static_cast<int64_t>(cached.size()) * eb);
        else if (o_.expert_cache == ExpertCacheMode::Slots)
          per_layer = o_.expert_cache_slots;
        for (int l : cached) slots[n][l] = std::min(per_layer, experts_on_node(l, n) - 1);
      }
    }
  }

  // Layer l's experts: each node's contiguous block, the first resident[n][l] of it on the GPU that runs the
  // layer for node n, the rest dealt to the node's NUMA nodes round-robin (so that every NUMA node's cores
  // share each layer), cached or streamed by that GPU when there is one.
  std::vector<ExpertHome> homes_of(int l, const PerNode& resident) const {
    std::vector<ExpertHome> homes;
    int64_t begin = 0;
    for (int n = 0; n < hw_.nodes; ++n) {
      const int64_t on_node = experts_on_node(l, n), on_gpu = resident[static_cast<size_t>(n)][static_cast<size_t>(l)];
      const int gpu = gpus_per_node() > 0 ? gpu_of_layer_on_node(l, n) : -1;
      if (on_gpu > 0) homes.push_back({begin, on_gpu, 1, gpu, -1});
      const int64_t in_ram = on_node - on_gpu;
      for (int k = 0; k < numa(); ++k) {
        const int64_t count = in_ram / numa() + (k < in_ram % numa() ? 1 : 0);
        if (count > 0) homes.push_back({begin + on_gpu + k, count, numa(), host_device(n, k), gpu});
      }
      begin += on_node;
    }
    return homes;
  }

  std::vector<LayerRun> runs_of(int l, const PerNode& slots) const {
    std::vector<LayerRun> runs;
    if (split_ == Split::Experts && gpus_per_node() == 0) {
      for (int n = 0; n < hw_.nodes; ++n) runs.push_back({host_device(n, 0), 0});
    } else if (split_ == Split::Experts) {
      for (int n = 0; n < hw_.nodes; ++n)
        runs.push_back({gpu_of_layer_on_node(l, n), slots[static_cast<size_t>(n)][static_cast<size_t>(l)]});
    } else {
      const int owner = owner_.at(l);
      const int node = plan_.devices[static_cast<size_t>(owner)].node;
      runs.push_back({owner, slots[static_cast<size_t>(node)][static_cast<size_t>(l)]});
    }
    return runs;
  }

  void place_experts() {
    std::vector<int> moe;
    for (int l : layers_)
      if (c_.is_moe_layer(l) && s_.layers[static_cast<size_t>(l)].n_experts > 0) moe.push_back(l);
    PerNode resident(static_cast<size_t>(hw_.nodes), std::vector<int64_t>(c_.n_layers_total(), 0));
    PerNode slots = resident;
    choose_gpu_experts(moe, resident, slots);
    for (int l : layers_) {
      LayerPlan lp;
      lp.layer = l;
      lp.attn = c_.attn_kind(l);
      lp.mtp = c_.is_mtp_layer(l);
      lp.runs = runs_of(l, slots);
      if (std::find(moe.begin(), moe.end(), l) != moe.end()) lp.experts = homes_of(l, resident);
      plan_.layers.push_back(std::move(lp));
    }
    charge_experts();
  }

  // The devices' bytes for the routed experts, all from the layers' homes and runs: the experts where they
  // are held, the GPU expert caches, the CPU expert path's buffers and pinned staging on a node that keeps
  // experts in RAM, and stream slots on the GPUs that cache or stream them.
  void charge_experts() {
    const int64_t eb = s_.expert_bytes();
    std::vector<bool> streams(plan_.devices.size(), false);
    for (int n = 0; n < hw_.nodes; ++n) {
      bool any_in_ram = false;
      for (const LayerPlan& lp : plan_.layers) {
        for (const ExpertHome& h : lp.experts) {
          DevicePlan& d = plan_.devices[static_cast<size_t>(h.device)];
          if (d.node != n) continue;
          d.add(use_class(core::WeightClass::RoutedExpert), h.count * eb);
          any_in_ram |= d.kind == DeviceKind::Host;
          if (h.cache >= 0) streams[static_cast<size_t>(h.cache)] = true;
        }
        if (const LayerRun* r = run_on_node(plan_, lp, n))
          plan_.devices[static_cast<size_t>(r->device)].add(use_class(Pool::ExpertCache), r->cache_slots * eb);
      }
      if (any_in_ram) {
        auto& host0 = plan_.devices[static_cast<size_t>(host_device(n, 0))];
        host0.add(use_class(Pool::Workspace), cpu_expert_workspace_bytes(c_, o_.ubatch));
        if (gpus_per_node() > 0) host0.add(use_class(Pool::Staging), pinned_staging_bytes(s_));
      }
    }
    for (size_t i = 0; i < streams.size(); ++i)
      if (streams[i]) plan_.devices[i].add(use_class(Pool::ExpertStream), stream_part());
  }

  // The GPU that runs layer l's attention for node n's tokens (replicated: node n's own GPU; pipeline: the
  // single owner, which only caches experts homed on its own node).
  int gpu_of_layer_on_node(int l, int n) const {
    const int owner = owner_.at(l);
    if (split_ == Split::Experts) return owner + n * (gpus_per_node() + numa());
    return plan_.devices[static_cast<size_t>(owner)].node == n ? owner : -1;
  }

  void finish() {
    plan_.kv = kv_cache_bytes(c_, kv_, ctx(), o_.parallel, o_.mtp);
    plan_.weights_bytes = s_.total_bytes - (o_.mtp ? 0 : s_.mtp_bytes());
    plan_.fits = true;
    for (const auto& d : plan_.devices) {
      if (!d.over()) continue;
      plan_.fits = false;
      auto items = d.use;
      std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
      std::string detail;
      for (size_t i = 0; i < items.size() && i < 3; ++i)
        detail += (i ? ", " : "") + items[i].first.name + " " + core::format_bytes(items[i].second);
      plan_.shortfalls.push_back({d.id, d.used(), d.capacity, detail});
    }
  }

  const ModelSpec& s_;
  const core::ModelConfig& c_;
  const Hardware& hw_;
  const PlanOptions& o_;
  KvType kv_;
  Split split_;
  Plan& plan_;
  const bool borrow_;
  std::vector<int> layers_;
  std::map<int, int> owner_;  // layer -> the device that runs it (Experts: node 0's)
  int64_t gpu_fixed_ = 0;
};

}  // namespace

Plan place_as(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options, KvType kv, Split split) {
  FERRY_CHECK(split != Split::Auto, "place_as: a layout, not auto");
  Plan plan;
  plan.model = spec.config.name;
  plan.arch = spec.config.arch;
  plan.model_source = spec.origin;
  plan.hardware = hw;
  plan.options = options;
  if (plan.options.ctx == 0) plan.options.ctx = spec.config.max_position_embeddings;
  plan.kv_type = kv;
  plan.split = split;
  const PlanOptions& o = plan.options;
  const bool may_borrow = o.borrow_cache_for_prefill && hw.nodes == 1 && hw.gpus.size() == 1 &&
                          std::min(o.ubatch, o.ctx) > o.resident_chunk && spec.expert_bytes() > 0;
  if (may_borrow) {
    Plan borrowing = plan;
    Placer placer(spec, hw, borrowing.options, kv, split, borrowing, true);
    placer.run();
    if (placer.lend_cache_to_prefill()) return borrowing;
  }
  Placer(spec, hw, plan.options, kv, split, plan, false).run();
  return plan;
}

int64_t Plan::prefill_borrowed() const {
  int64_t b = 0;
  for (const DevicePlan& d : devices) b += d.prefill_borrowed;
  return b;
}

int64_t Plan::resident_chunk() const {
  return prefill_borrowed() > 0 ? std::min(options.resident_chunk, options.ubatch) : options.ubatch;
}

}  // namespace ferry::planner
