#include "offload/expert_dispatch.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "planner/core/error.h"
#include "planner/memory.h"
#include "runtime/model/weight_placement.h"

namespace ferry::offload {

using runtime::CopyEvent;
using runtime::DeviceBuffer;
using runtime::ExpertUse;
using runtime::ExpertWeights;
using runtime::MemoryClass;

namespace {
size_t sz(int64_t v) { return static_cast<size_t>(v); }
}  // namespace

int64_t stream_min_tokens_for(double cpu_expert_bytes_per_s, double link_bytes_per_s) {
  if (link_bytes_per_s <= 0) return 2;
  return std::max<int64_t>(2, static_cast<int64_t>(std::ceil(cpu_expert_bytes_per_s / link_bytes_per_s)));
}

struct ExpertDispatch::Layer {
  bool gpu_layer = false;  // the layer's non-routed weights (and its device work) are on the GPU
  bool moe = false;
  bool resident = false;
  std::vector<ExpertWeights> on_gpu;  // resident: every expert's device copy
  std::vector<DeviceBuffer> resident_buffers;
  std::vector<DeviceBuffer> slots;  // cache slots, one expert each
  std::vector<int> host_node;       // per expert in RAM: the NUMA node the CPU computes it from
};

ExpertDispatch::ExpertDispatch(const planner::Plan& plan, const runtime::ModelWeights& host_experts,
                               runtime::Backend& gpu, runtime::Backend& host, const DispatchOptions& options,
                               const std::vector<std::vector<int>>& host_nodes)
    : host_(host_experts),
      gpu_(gpu),
      options_(options),
      cache_(
          [&] {
            std::vector<int64_t> slots(sz(host_experts.config().n_layers_total()), 0);
            for (const auto& lp : plan.layers) slots[sz(lp.layer)] = planner::expert_counts(plan, lp, 0).cache_slots;
            return slots;
          }(),
          host_experts.config().n_routed_experts, options.policy) {
  const auto& c = host_.config();
  FERRY_CHECK(options_.stream_min_tokens >= 0, "stream_min_tokens must be >= 0");
  const int64_t n_layers = c.n_layers_total();
  per_layer_.resize(sz(n_layers));
  layers_.resize(sz(n_layers));
  for (auto& l : layers_) l = std::make_unique<Layer>();
  views_.resize(sz(c.n_routed_experts));
  int gpu_index = -1;
  for (size_t i = 0; i < plan.devices.size(); ++i)
    if (plan.devices[i].kind == planner::DeviceKind::Gpu) gpu_index = static_cast<int>(i);
  bool any_in_ram = false;
  for (const auto& lp : plan.layers) {
    const planner::LayerRun* run = planner::run_on_node(plan, lp, 0);
    layers_[sz(lp.layer)]->gpu_layer = run && run->device == gpu_index;
    if (lp.experts.empty()) continue;
    const runtime::LayerWeights& L = lp.mtp ? *host_.mtp() : host_.layer(lp.layer);
    FERRY_CHECK(lp.n_experts() == static_cast<int64_t>(L.experts.size()),
                "plan: layer " + std::to_string(lp.layer) + " places " + std::to_string(lp.n_experts()) +
                    " experts, the checkpoint has " + std::to_string(L.experts.size()));
    const planner::ExpertCounts homes = planner::expert_counts(plan, lp, 0);
    FERRY_CHECK(homes.on_gpu == 0 || homes.on_gpu == homes.held,
                "plan: layer " + std::to_string(lp.layer) + " keeps part of its experts on the GPU");
    Layer& dst = *layers_[sz(lp.layer)];
    dst.moe = true;
    expert_bytes_ = runtime::expert_bytes(L.experts.front());
    if (homes.on_gpu > 0) {
      dst.resident = true;
      runtime::WeightCopier copier(gpu_);
      dst.on_gpu = L.experts;
      for (auto& e : dst.on_gpu) copier.move(e);
      dst.resident_buffers = copier.finish();
      continue;
    }
    any_in_ram = true;
    dst.host_node = host_nodes.at(sz(lp.layer));
    FERRY_CHECK(dst.host_node.size() == L.experts.size(),
                "expert dispatch: layer " + std::to_string(lp.layer) + " has NUMA nodes for " +
                    std::to_string(dst.host_node.size()) + " experts of " + std::to_string(L.experts.size()));
    for (int64_t s = 0; s < homes.cache_slots; ++s)
      dst.slots.push_back(gpu_.allocate(MemoryClass::ExpertCache, expert_bytes_));
  }
  if (!any_in_ram) return;
  // Stream slots and staging as planner/memory.h sizes them: two groups of top-k experts.
  const int64_t ring = 2 * c.num_experts_per_tok;
  for (int64_t i = 0; i < ring; ++i) {
    stream_slots_.push_back(gpu_.allocate(MemoryClass::ExpertCache, expert_bytes_));
    staging_.push_back(host.allocate(MemoryClass::Staging, expert_bytes_));
    // Page-locked for the GPU's copy engine: copies from it run at the link's speed and beside the CPU.
    staging_pins_.push_back(gpu_.pin_host(staging_.back().data(), expert_bytes_));
  }
  stream_readers_.resize(sz(ring));
  staging_events_.resize(sz(ring));
  const int64_t ub = plan.options.ubatch, d = c.hidden_size, inter = c.moe_intermediate_size;
  cpu_x_ = runtime::device_vector<float>(&host, MemoryClass::Workspace, sz(ub * d));
  cpu_gate_ = runtime::device_vector<float>(&host, MemoryClass::Workspace, sz(ub * inter));
  cpu_up_ = runtime::device_vector<float>(&host, MemoryClass::Workspace, sz(ub * inter));
  cpu_out_ = runtime::device_vector<float>(&host, MemoryClass::Workspace, sz(ub * d));
  cpu_scratch_ = {cpu_x_.data(), cpu_gate_.data(), cpu_up_.data(), cpu_out_.data()};
}

ExpertDispatch::~ExpertDispatch() {
  // The copies still in flight target slots about to be freed: let them land first (freeing waits too, but a
  // staging buffer must not be freed under a copy reading it).
  for (const CopyEvent& e : staging_events_) gpu_.wait(e);
}

ExpertUse ExpertDispatch::in_slot(int expert, const ExpertWeights& host, const DeviceBuffer& slot, CopyEvent ready) {
  ExpertWeights& view = views_.at(sz(expert));
  view = runtime::expert_in_slot(host, static_cast<const uint8_t*>(slot.data()));
  ExpertUse u;
  u.weights = &view;
  u.on_device = true;
  u.ready = ready;
  u.reads = {slot.data(), slot.bytes()};
  return u;
}

ExpertUse ExpertDispatch::on_cpu(const ExpertWeights& host, DispatchStats& s, int host_node) {
  ++s.cpu;
  ExpertUse u;
  u.weights = &host;
  u.scratch = &cpu_scratch_;
  u.host_node = host_node;
  return u;
}

CopyEvent ExpertDispatch::copy_expert(const ExpertWeights& host, DeviceBuffer& dst, DispatchStats& stats,
                                      runtime::ComputeEvent after) {
  ++stats.copies;
  stats.copy_bytes += expert_bytes_;
  const size_t s = next_staging_;
  next_staging_ = (next_staging_ + 1) % staging_.size();
  if (!gpu_.completed(staging_events_[s])) {  // the staging slot's last copy must have read it
    const auto t0 = std::chrono::steady_clock::now();
    gpu_.wait(staging_events_[s]);
    stats.copy_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  auto* p = static_cast<uint8_t*>(staging_[s].data());
  staging_events_[s] = gpu_.copy_to_device_after(dst, 0, p, runtime::pack_expert(host, p), after);
  return staging_events_[s];
}

CopyEvent ExpertDispatch::in_flight_event(int layer, int slot) const {
  for (const InFlight& f : in_flight_)
    if (f.layer == layer && f.slot == slot) return f.event;
  FERRY_THROW("expert cache: layer " + std::to_string(layer) + " slot " + std::to_string(slot) +
              " is Loading with no copy in flight");
}

void ExpertDispatch::reap() {
  auto landed = [&](const InFlight& f) {
    if (!gpu_.completed(f.event)) return false;
    cache_.loaded(f.layer, f.slot);
    return true;
  };
  in_flight_.erase(std::remove_if(in_flight_.begin(), in_flight_.end(), landed), in_flight_.end());
  auto ran = [&](const Pin& p) {
    if (!gpu_.completed(p.done)) return false;
    cache_.release(p.layer, p.slot);
    return true;
  };
  pins_.erase(std::remove_if(pins_.begin(), pins_.end(), ran), pins_.end());
}

void ExpertDispatch::routed(const runtime::LayerWeights& layer, std::span<const int64_t> tokens_per_expert) {
  const int l = static_cast<int>(layer.index);
  Layer& L = *layers_.at(sz(l));
  reap();
  if (!L.moe || L.resident || L.slots.empty()) return;
  std::vector<int> chosen;
  for (size_t e = 0; e < tokens_per_expert.size(); ++e)
    if (tokens_per_expert[e] > 0 && !cache_.contains(l, static_cast<int>(e))) chosen.push_back(static_cast<int>(e));
  DispatchStats& s = per_layer_[sz(l)];
  for (const Fill& f : cache_.prefetch(l, chosen)) {
    in_flight_.push_back({l, f.slot, copy_expert(layer.experts[sz(f.expert)], L.slots[sz(f.slot)], s)});
  }
}

runtime::Backend* ExpertDispatch::device(const runtime::LayerWeights& layer) {
  return layers_.at(sz(layer.index))->gpu_layer ? &gpu_ : nullptr;
}

ExpertUse ExpertDispatch::acquire(const runtime::LayerWeights& layer, int64_t expert, int64_t tokens) {
  const int l = static_cast<int>(layer.index), e = static_cast<int>(expert);
  Layer& L = *layers_.at(sz(l));
  FERRY_CHECK(L.moe, "expert dispatch: layer " + std::to_string(l) + " has no routed experts in the plan");
  DispatchStats& s = per_layer_[sz(l)];
  acquired_slot_ = acquired_stream_ = -1;
  if (L.resident) {
    ++s.resident;
    ExpertUse u;
    u.weights = &L.on_gpu[sz(e)];
    u.on_device = true;
    return u;
  }
  const ExpertWeights& host = layer.experts[sz(e)];
  // A layer whose device work runs on the host has nothing on the GPU to stream to.
  const bool many = L.gpu_layer && options_.stream_min_tokens > 0 && tokens >= options_.stream_min_tokens;
  if (!L.slots.empty()) {
    const Lookup lk = cache_.lookup(l, e);
    if (lk.kind == LookupKind::Hit) {
      CopyEvent ready;
      if (!lk.ready) {
        reap();
        if (cache_.slot_info(l, lk.slot).state != SlotState::Ready) {
          if (!many) {
            // Its prefetch is still landing: the CPU computes this use rather than wait; the next use hits.
            cache_.release(l, lk.slot);
            return on_cpu(host, s, L.host_node[sz(e)]);
          }
          ready = in_flight_event(l, lk.slot);  // the device waits for it on its stream, the host does not
        }
      }
      ++s.cache_hits;
      acquired_slot_ = lk.slot;
      return in_slot(e, host, L.slots[sz(lk.slot)], ready);
    }
    if (lk.kind == LookupKind::Miss) {
      const CopyEvent ready = copy_expert(host, L.slots[sz(lk.slot)], s);
      in_flight_.push_back({l, lk.slot, ready});
      if (many) {
        ++s.streamed;
        acquired_slot_ = lk.slot;
        return in_slot(e, host, L.slots[sz(lk.slot)], ready);
      }
      // Few tokens: the CPU computes it now; the slot fills in the background for the next use.
      cache_.release(l, lk.slot);
    }
  }
  if (many) {
    // The ring of stream slots: this copy lands once the work that read the slot last has run, and queues
    // while the experts before it compute.
    const size_t k = next_stream_;
    next_stream_ = (next_stream_ + 1) % stream_slots_.size();
    const CopyEvent ready = copy_expert(host, stream_slots_[k], s, stream_readers_[k]);
    ++s.streamed;
    acquired_stream_ = static_cast<int>(k);
    return in_slot(e, host, stream_slots_[k], ready);
  }
  return on_cpu(host, s, L.host_node[sz(e)]);
}

void ExpertDispatch::release(const runtime::LayerWeights& layer, int64_t, runtime::ComputeEvent done) {
  if (acquired_slot_ >= 0) pins_.push_back({static_cast<int>(layer.index), acquired_slot_, done});
  if (acquired_stream_ >= 0) stream_readers_[sz(acquired_stream_)] = done;
  acquired_slot_ = acquired_stream_ = -1;
}

DispatchStats ExpertDispatch::total() const {
  DispatchStats t;
  for (const DispatchStats& s : per_layer_) {
    t.resident += s.resident;
    t.cache_hits += s.cache_hits;
    t.cpu += s.cpu;
    t.streamed += s.streamed;
    t.copies += s.copies;
    t.copy_bytes += s.copy_bytes;
    t.copy_wait_seconds += s.copy_wait_seconds;
  }
  return t;
}

}  // namespace ferry::offload
