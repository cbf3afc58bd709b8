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
using runtime::ExpertTask;
using runtime::ExpertWeights;
using runtime::MemoryClass;
using runtime::MoeSchedule;

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
  size_t lent = 0;                  // slots freed for a prefill chunk's workspace (lend_cache)
  std::vector<int> host;            // per expert in RAM: the host backend (index into hosts_) that holds it
  std::vector<bool> held;           // per expert: homed on this node (a node's view holds only its share)
  const runtime::LayerWeights* bound = nullptr;  // the session's weights of the layer: the source of its copies
};

ExpertDispatch::ExpertDispatch(const planner::Plan& plan, const runtime::ModelWeights& host_experts,
                               runtime::Backend& gpu, std::span<runtime::Backend* const> hosts,
                               const DispatchOptions& options, const std::vector<std::vector<int>>& host_of_expert)
    : host_(host_experts),
      gpu_(gpu),
      hosts_(hosts.begin(), hosts.end()),
      options_(options),
      cache_(
          [&] {
            std::vector<int64_t> slots(sz(host_experts.config().n_layers_total()), 0);
            const int node = planner::view_node(plan);
            for (const auto& lp : plan.layers) slots[sz(lp.layer)] = planner::expert_counts(plan, lp, node).cache_slots;
            return slots;
          }(),
          host_experts.config().n_routed_experts, options.policy) {
  const auto& c = host_.config();
  FERRY_CHECK(options_.stream_min_tokens >= 0, "stream_min_tokens must be >= 0");
  const int64_t n_layers = c.n_layers_total();
  per_layer_.resize(sz(n_layers));
  layers_.resize(sz(n_layers));
  for (auto& l : layers_) l = std::make_unique<Layer>();
  FERRY_CHECK(!hosts_.empty(), "expert dispatch: no host backend");
  runtime::Backend& host = *hosts_.front();
  int gpu_index = -1;
  for (size_t i = 0; i < plan.devices.size(); ++i)
    if (plan.devices[i].kind == planner::DeviceKind::Gpu) gpu_index = static_cast<int>(i);
  bool any_in_ram = false;
  bool streams = false;  // some experts in RAM have this GPU to be cached or streamed on
  const int node = planner::view_node(plan);
  for (const auto& lp : plan.layers) {
    const planner::LayerRun* run = planner::run_on_node(plan, lp, node);
    layers_[sz(lp.layer)]->gpu_layer = run && run->device == gpu_index;
    if (lp.experts.empty()) continue;
    const runtime::LayerWeights& L = lp.mtp ? *host_.mtp() : host_.layer(lp.layer);
    const planner::ExpertCounts homes = planner::expert_counts(plan, lp, node);
    FERRY_CHECK(homes.on_gpu == 0 || homes.on_gpu == homes.held, "plan: layer {} keeps part of its experts on the GPU",
                lp.layer);
    Layer& dst = *layers_[sz(lp.layer)];
    dst.moe = true;
    dst.held.assign(L.experts.size(), false);
    for (const planner::ExpertHome& h : lp.experts)
      for (int64_t e = h.first; e <= h.last(); e += h.step) {
        FERRY_CHECK(e < static_cast<int64_t>(L.experts.size()), "plan: layer {} homes expert {}, the checkpoint has {}",
                    lp.layer, e, L.experts.size());
        dst.held[sz(e)] = true;
      }
    expert_bytes_ = runtime::expert_bytes(L.experts.front());
    if (homes.on_gpu > 0) {
      dst.resident = true;
      runtime::WeightCopier copier(gpu_);
      dst.on_gpu = L.experts;
      for (size_t e = 0; e < dst.on_gpu.size(); ++e)
        if (dst.held[e]) copier.move(dst.on_gpu[e]);
      dst.resident_buffers = copier.finish();
      continue;
    }
    any_in_ram = true;
    for (const planner::ExpertHome& h : lp.experts) streams |= h.cache >= 0;
    dst.host = host_of_expert.at(sz(lp.layer));
    dst.host.resize(L.experts.size(), -1);
    for (size_t e = 0; e < dst.host.size(); ++e)
      FERRY_CHECK(!dst.held[e] || (dst.host[e] >= 0 && dst.host[e] < static_cast<int>(hosts_.size())),
                  "expert dispatch: layer {} has expert {} in RAM on host {} of {}", lp.layer, e, dst.host[e],
                  hosts_.size());
    for (int64_t s = 0; s < homes.cache_slots; ++s)
      dst.slots.push_back(gpu_.allocate(MemoryClass::ExpertCache, expert_bytes_));
  }
  if (!any_in_ram) return;
  // Stream slots and staging as planner/memory.h sizes them: two groups of top-k experts; none when this GPU runs
  // none of the layers whose experts this node keeps in RAM (a pipeline stage holding a later stage's experts).
  const int64_t ring = streams ? 2 * c.num_experts_per_tok : 0;
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

ExpertTask ExpertDispatch::in_slot(const ExpertWeights& host, const DeviceBuffer& slot, CopyEvent ready) const {
  ExpertTask t;
  t.weights = runtime::expert_in_slot(host, static_cast<const uint8_t*>(slot.data()));
  t.on_device = true;
  t.ready = ready;
  t.reads = {slot.data(), slot.bytes()};
  return t;
}

ExpertTask ExpertDispatch::on_host(int layer, int expert, const ExpertWeights& host) {
  ++per_layer_[sz(layer)].cpu;
  ExpertTask t;
  t.weights = host;
  t.backend = hosts_[sz(layers_[sz(layer)]->host[sz(expert)])];
  t.scratch = cpu_scratch_;
  return t;
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

// As soon as the router has chosen: the chosen experts the cache lacks get slots and their copies start.
void ExpertDispatch::prefetch(const runtime::LayerWeights& layer, std::span<const int64_t> tokens_per_expert) {
  const int l = static_cast<int>(layer.index);
  Layer& L = *layers_.at(sz(l));
  std::vector<int> chosen;
  for (size_t e = 0; e < tokens_per_expert.size(); ++e)
    if (tokens_per_expert[e] > 0 && L.held[e] && !cache_.contains(l, static_cast<int>(e)))
      chosen.push_back(static_cast<int>(e));
  DispatchStats& s = per_layer_[sz(l)];
  for (const Fill& f : cache_.prefetch(l, chosen))
    cache_.filling(l, f.slot, copy_expert(layer.experts[sz(f.expert)], L.slots[sz(f.slot)], s));
}

MoeSchedule ExpertDispatch::schedule(const runtime::LayerWeights& layer, std::span<const int64_t> tokens_per_expert) {
  const int l = static_cast<int>(layer.index);
  Layer& L = *layers_.at(sz(l));
  FERRY_CHECK(L.moe, "expert dispatch: layer {} has no routed experts in the plan", l);
  cache_.sync(gpu_);
  L.bound = &layer;
  if (!L.resident && !L.slots.empty()) prefetch(layer, tokens_per_expert);
  MoeSchedule plan;
  plan.layer = layer.index;
  plan.device = L.gpu_layer ? &gpu_ : nullptr;
  std::vector<bool> stream_slot_taken(stream_slots_.size(), false);
  for (size_t e = 0; e < tokens_per_expert.size(); ++e) {
    if (tokens_per_expert[e] == 0 || !L.held[e]) continue;  // another rank's
    ExpertTask t = plan_task(layer, static_cast<int>(e), tokens_per_expert[e], stream_slot_taken);
    t.expert = static_cast<int32_t>(e);
    t.tokens = tokens_per_expert[e];
    plan.tasks.push_back(t);
  }
  return plan;
}

ExpertTask ExpertDispatch::plan_task(const runtime::LayerWeights& layer, int e, int64_t tokens,
                                     std::vector<bool>& stream_slot_taken) {
  const int l = static_cast<int>(layer.index);
  Layer& L = *layers_[sz(l)];
  DispatchStats& s = per_layer_[sz(l)];
  if (L.resident) {
    ++s.resident;
    ExpertTask t;
    t.weights = L.on_gpu[sz(e)];
    t.on_device = true;
    return t;
  }
  const ExpertWeights& host = layer.experts[sz(e)];
  // A layer whose device work runs on the host has nothing on the GPU to stream to.
  const bool many = L.gpu_layer && options_.stream_min_tokens > 0 && tokens >= options_.stream_min_tokens;
  if (!L.slots.empty()) {
    const Lookup lk = cache_.lookup(l, e);
    if (lk.kind == LookupKind::Hit) {
      const CopyEvent fill = cache_.fill_event(l, lk.slot);
      if (!lk.ready && !many) {
        // Its prefetch is still landing: the CPU computes this use rather than wait; the next use hits.
        cache_.release(l, lk.slot);
        return on_host(l, e, host);
      }
      ++s.cache_hits;
      ExpertTask t = in_slot(host, L.slots[sz(lk.slot)], lk.ready ? CopyEvent{} : fill);
      t.cache_slot = lk.slot;  // pinned by the lookup until the task's op has run
      return t;
    }
    if (lk.kind == LookupKind::Miss) {
      const CopyEvent ready = copy_expert(host, L.slots[sz(lk.slot)], s);
      cache_.filling(l, lk.slot, ready);
      if (many) {
        ++s.streamed;
        ExpertTask t = in_slot(host, L.slots[sz(lk.slot)], ready);
        t.cache_slot = lk.slot;
        return t;
      }
      // Few tokens: the CPU computes it now; the slot fills in the background for the next use.
      cache_.release(l, lk.slot);
    }
  }
  if (!many) return on_host(l, e, host);
  // The ring of stream slots: the copy lands once the op that read the slot last has run, and queues while the
  // experts before it compute. A slot an earlier task of this layer reads is copied into as soon as that task's
  // op is issued (issued()), behind it.
  const size_t k = next_stream_;
  next_stream_ = (next_stream_ + 1) % stream_slots_.size();
  ++s.streamed;
  ExpertTask t = in_slot(host, stream_slots_[k], {});
  t.stream_slot = static_cast<int>(k);
  if (stream_slot_taken[k]) {
    t.copy_at_run = true;
  } else {
    t.ready = copy_expert(host, stream_slots_[k], s, stream_readers_[k]);
    stream_slot_taken[k] = true;
  }
  return t;
}

CopyEvent ExpertDispatch::start(MoeSchedule& plan, size_t i) {
  ExpertTask& t = plan.tasks.at(i);
  if (!t.copy_at_run) return t.ready;
  const Layer& L = *layers_.at(sz(plan.layer));
  const size_t k = sz(t.stream_slot);
  t.ready =
      copy_expert(L.bound->experts[sz(t.expert)], stream_slots_[k], per_layer_[sz(plan.layer)], stream_readers_[k]);
  t.copy_at_run = false;
  return t.ready;
}

void ExpertDispatch::issued(MoeSchedule& plan, size_t i, runtime::ComputeEvent done) {
  const ExpertTask& t = plan.tasks.at(i);
  if (t.cache_slot >= 0) cache_.reading(static_cast<int>(plan.layer), t.cache_slot, done);
  if (t.stream_slot < 0) return;
  stream_readers_[sz(t.stream_slot)] = done;
  // The next task through this ring slot gets its copy now, behind this op: copies run a ring ahead of the
  // compute (the next expert's copy is queued before this one's op starts) instead of waiting for their task.
  for (size_t j = i + 1; j < plan.tasks.size(); ++j)
    if (plan.tasks[j].stream_slot == t.stream_slot) {
      if (plan.tasks[j].copy_at_run) (void)start(plan, j);
      break;
    }
}

int64_t ExpertDispatch::lend_cache() {
  FERRY_CHECK(!lent_, "expert dispatch: the cache is lent already");
  cache_.empty(gpu_);
  int64_t bytes = 0;
  for (const auto& L : layers_) {
    L->lent = L->slots.size();
    bytes += static_cast<int64_t>(L->lent) * expert_bytes_;
    L->slots.clear();  // frees them: the ledger's ExpertCache falls by `bytes`
  }
  lent_ = true;
  return bytes;
}

void ExpertDispatch::take_back_cache() {
  FERRY_CHECK(lent_, "expert dispatch: the cache was not lent");
  for (const auto& L : layers_) {
    for (size_t s = 0; s < L->lent; ++s) L->slots.push_back(gpu_.allocate(MemoryClass::ExpertCache, expert_bytes_));
    L->lent = 0;
  }
  lent_ = false;
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
