// The MoE layer as plan and run (DESIGN.md §3). After routing, the expert provider (offload/) plans the whole
// layer in one schedule — for every chosen expert, which backend computes it, from which weights (resident on the
// device, in a cache or stream slot, or the host's copy in its NUMA node's memory), with which buffers, after which
// copy — and the MoE layer (moe.cpp) runs it: the device's tasks on the device's stream, the host's on the host
// backend of the expert's NUMA node meanwhile, every output combined in expert order. Without a provider (a
// CPU-only run) every expert is the checkpoint's, computed by the layer's device with the session's workspace.
// This seam is where transport/ adds the exchange of tokens between ranks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "runtime/backend/backend.h"
#include "runtime/model/model_weights.h"

namespace ferry::runtime {

// Buffers of one expert's SwiGLU over m tokens: inputs [m, d], gate and up [m, inter], outputs [m, d].
struct ExpertScratch {
  float* x = nullptr;
  float* gate = nullptr;
  float* up = nullptr;
  float* out = nullptr;
};

// One chosen expert of a layer, and how it is computed.
struct ExpertTask {
  int32_t expert = -1;
  int64_t tokens = 0;     // tokens of the chunk that chose it
  ExpertWeights weights;  // views in the memory of the backend that computes it
  // The layer's device computes it on its stream, with the session's workspace, once `ready` has landed (or, with
  // copy_at_run, the copy ExpertProvider::start() queues), reading `reads`; otherwise `backend`, a host backend,
  // computes it at once, with `scratch`, beside the device's work.
  bool on_device = false;
  CopyEvent ready;
  bool copy_at_run = false;  // its slot is read by an earlier task of the layer: the copy is queued behind it
  DeviceRange reads;
  Backend* backend = nullptr;
  ExpertScratch scratch;
  // The provider's own: the cache slot or stream slot the task reads (-1: none).
  int cache_slot = -1, stream_slot = -1;
};

struct MoeSchedule {
  int64_t layer = -1;
  Backend* device = nullptr;      // runs the layer's device work (shared expert, on_device tasks); nullptr: the host
  std::vector<ExpertTask> tasks;  // the chosen experts, in expert order
};

class ExpertProvider {
 public:
  virtual ~ExpertProvider() = default;
  // The router of `layer` has chosen: tokens_per_expert[e] tokens of this chunk go to expert e. Plans every
  // chosen expert; copies may start here (prefetch). Never waits for a copy (device tasks wait on the stream).
  virtual MoeSchedule schedule(const LayerWeights& layer, std::span<const int64_t> tokens_per_expert) = 0;
  // Just before task `i` is run: the copy its weights wait for, queued now when the task says copy_at_run.
  virtual CopyEvent start(MoeSchedule& s, size_t i) = 0;
  // Task `i` has been issued: `done` completes once it has run (a host task has run already: {}). The slot it
  // reads is not refilled before.
  virtual void issued(MoeSchedule& s, size_t i, ComputeEvent done) = 0;
  // The prefill phase of a per-phase workspace (planner::DevicePlan::prefill_borrowed): once every copy into
  // the device's expert cache has landed and every op reading it has run, frees the cache's slots, forgetting
  // what they held, and returns their bytes (0: a provider without a cache lends nothing). Until
  // take_back_cache(), which allocates them again, empty, for decode to refill, the cache takes nothing: experts
  // go through the stream slots or to their hosts.
  virtual int64_t lend_cache() { return 0; }
  virtual void take_back_cache() {}
};

// Passes every call to another provider: the base of wrappers that observe, check or time some of the calls
// (benchmarks, tests) and override only those.
class ForwardingExpertProvider : public ExpertProvider {
 public:
  explicit ForwardingExpertProvider(ExpertProvider& inner) : inner_(inner) {}
  MoeSchedule schedule(const LayerWeights& layer, std::span<const int64_t> tokens_per_expert) override {
    return inner_.schedule(layer, tokens_per_expert);
  }
  CopyEvent start(MoeSchedule& s, size_t i) override { return inner_.start(s, i); }
  void issued(MoeSchedule& s, size_t i, ComputeEvent done) override { inner_.issued(s, i, done); }
  int64_t lend_cache() override { return inner_.lend_cache(); }
  void take_back_cache() override { inner_.take_back_cache(); }

 protected:
  ExpertProvider& inner_;
};

}  // namespace ferry::runtime
