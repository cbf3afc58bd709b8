// The per-layer expert policy (issue 5, item 4) as the MoE layer's planner (runtime/model/moe_schedule.h): after
// routing, every chosen expert of the layer gets one task, computed
//   - on the GPU when the Plan made its layer's experts resident there, or when the GPU expert cache holds it;
//   - on the CPU — by the host backend of the NUMA node the Plan homes it on, from its copy there, with the host's
//     own buffers — when it lives in host RAM and the chunk has fewer than `stream_min_tokens` tokens for it
//     (decode); a miss still starts filling a cache slot on the copy stream, so that the next use hits;
//   - on the GPU after copying it there (a cache slot, or a stream slot when every slot is busy) when at least
//     `stream_min_tokens` tokens use it (prefill), where one copy serves many tokens.
// Prefetch: the chosen experts that the cache lacks get slots and their copies start when the layer is planned,
// so copies overlap the shared expert and the experts before. Nothing here waits for a copy: a task on the GPU is
// run on the device's compute stream after its copy's event, so the host goes on to its own tasks while the GPU
// works, and streamed experts are copied ahead through the ring of stream slots while earlier ones compute
// (double buffering); a ring slot an earlier task of the same layer reads is refilled as soon as that task's op
// is issued (ExpertProvider::issued), behind it, so the copy engine runs a ring ahead of the compute.
// Copies go through pinned staging slots on the host; a staging, cache or stream slot is reused only once the
// copy that used it has landed and no kernel reads it: the cache holds each slot's fill and reader events
// (ExpertCache::filling / reading / sync), and a stream slot's refill is queued behind the op that read it.
//
// Every path runs the same CPU kernels on the same bytes in the same order as a CPU-only run (the simulated
// device is host memory), so the logits are bitwise those of a CPU-only run.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "offload/expert_cache.h"
#include "planner/plan.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/device_vector.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/moe_schedule.h"

namespace ferry::offload {

struct DispatchOptions {
  CachePolicy policy = CachePolicy::Lru;
  // Tokens of a chunk that make copying an expert to the GPU pay (prefill streaming); 0 = never copy for
  // tokens (only cache fills). planner-side default: stream_min_tokens_for().
  int64_t stream_min_tokens = 0;
};

// Where expert uses went, per layer and in all.
struct DispatchStats {
  int64_t resident = 0;    // computed on the GPU from experts the Plan made resident
  int64_t cache_hits = 0;  // computed on the GPU from a cache slot that already held the expert
  int64_t cpu = 0;         // computed on the CPU from host RAM
  int64_t streamed = 0;    // copied for this use (cache miss or stream slot), then computed on the GPU
  int64_t copies = 0;      // expert copies to the GPU (fills, prefetches, streams)
  int64_t copy_bytes = 0;
  double copy_wait_seconds = 0;  // time the host waited for a staging slot's copy to land
  int64_t uses() const { return resident + cache_hits + cpu + streamed; }
  // Share of expert uses served on the GPU.
  double gpu_share() const { return uses() ? double(resident + cache_hits + streamed) / uses() : 0; }
};

// The policy's threshold from the cost model: an expert computed by the CPU costs tokens x bytes / (CPU expert
// bandwidth) — the matrix-vector kernels read the weights once per token — while a copy costs bytes / link
// bandwidth once; streaming pays from ceil(cpu / link) tokens, and never below 2, so that decode (one token
// per expert) stays on the CPU or the cache.
int64_t stream_min_tokens_for(double cpu_expert_bytes_per_s, double link_bytes_per_s);

class ExpertDispatch final : public runtime::ExpertProvider {
 public:
  // `plan` runs on node 0 with one GPU (BoundPlan checks); its expert homes say which layers' experts are
  // resident on `gpu`. `host_experts` are the checkpoint's. `hosts[k]` is the backend of the plan's k-th host
  // device and `host_of_expert[layer][expert]` the one an expert in RAM is homed on
  // (HostExpertStore::host_of_expert()). Allocates the cache slots, stream slots (device, class ExpertCache),
  // staging (the first host, Staging) and the CPU path's buffers (the first host, Workspace) as the Plan sizes
  // them, and moves resident layers' experts to `gpu`.
  ExpertDispatch(const planner::Plan& plan, const runtime::ModelWeights& host_experts, runtime::Backend& gpu,
                 std::span<runtime::Backend* const> hosts, const DispatchOptions& options,
                 const std::vector<std::vector<int>>& host_of_expert);
  ~ExpertDispatch() override;

  runtime::MoeSchedule schedule(const runtime::LayerWeights& layer,
                                std::span<const int64_t> tokens_per_expert) override;
  runtime::CopyEvent start(runtime::MoeSchedule& s, size_t i) override;
  void issued(runtime::MoeSchedule& s, size_t i, runtime::ComputeEvent done) override;
  // Per-phase workspace: every cache slot freed (after its copies and readers), and allocated again, empty.
  int64_t lend_cache() override;
  void take_back_cache() override;
  bool cache_lent() const { return lent_; }

  const DispatchStats& stats(int64_t layer) const { return per_layer_.at(static_cast<size_t>(layer)); }
  DispatchStats total() const;
  const ExpertCache& cache() const { return cache_; }
  int64_t stream_min_tokens() const { return options_.stream_min_tokens; }

 private:
  struct Layer;
  // One chosen expert's task: resident, from a cache slot, through a stream slot, or on its host.
  runtime::ExpertTask plan_task(const runtime::LayerWeights& layer, int expert, int64_t tokens,
                                std::vector<bool>& stream_slot_taken);
  runtime::ExpertTask in_slot(const runtime::ExpertWeights& host, const runtime::DeviceBuffer& slot,
                              runtime::CopyEvent ready) const;
  runtime::ExpertTask on_host(int layer, int expert, const runtime::ExpertWeights& host);
  // Stages `host` and queues its copy into `dst` (after the op `after` has run), counted in `s`.
  runtime::CopyEvent copy_expert(const runtime::ExpertWeights& host, runtime::DeviceBuffer& dst, DispatchStats& s,
                                 runtime::ComputeEvent after = {});
  void prefetch(const runtime::LayerWeights& layer, std::span<const int64_t> tokens_per_expert);

  const runtime::ModelWeights& host_;
  runtime::Backend& gpu_;
  std::vector<runtime::Backend*> hosts_;
  DispatchOptions options_;
  int64_t expert_bytes_ = 0;
  std::vector<std::unique_ptr<Layer>> layers_;
  ExpertCache cache_;
  std::vector<DispatchStats> per_layer_;
  std::vector<runtime::DeviceBuffer> stream_slots_;
  std::vector<runtime::ComputeEvent> stream_readers_;  // per stream slot, the last op reading it
  size_t next_stream_ = 0;
  std::vector<runtime::DeviceBuffer> staging_;
  std::vector<std::shared_ptr<void>> staging_pins_;  // declared after staging_: unpinned before it is freed
  std::vector<runtime::CopyEvent> staging_events_;
  size_t next_staging_ = 0;
  bool lent_ = false;
  runtime::DeviceVector<float> cpu_x_, cpu_gate_, cpu_up_, cpu_out_;
  runtime::ExpertScratch cpu_scratch_;
};

}  // namespace ferry::offload
