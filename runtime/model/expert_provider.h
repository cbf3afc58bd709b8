// Where the MoE layer finds each routed expert's weights, and with which buffers it computes it. The forward
// pass asks; offload/ answers from the Plan: an expert resident on the device, a GPU expert-cache slot, a
// stream slot it was just copied into, or the host copy computed by the CPU with the host's own buffers.
// Without a provider (a CPU-only run) every expert is the checkpoint's and uses the session's workspace.
// With one, the layer's device work (shared expert, experts on the device) is launched on the device's
// compute stream and the host computes its experts meanwhile (issue 5, item 4: CPU expert work overlaps the
// GPU's in the same layer).
#pragma once

#include <cstdint>
#include <span>

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

struct ExpertUse {
  const ExpertWeights* weights = nullptr;
  const ExpertScratch* scratch = nullptr;  // nullptr: the session's workspace (the expert runs with the layer)
  // On the layer's device (ExpertProvider::device), launched after the copy `ready` has landed and reading
  // `reads`; otherwise the host computes it at once, beside the device's work.
  bool on_device = false;
  CopyEvent ready;
  DeviceRange reads;
  int host_node = -1;  // NUMA node (tbb's id) of the weights the CPU computes from, for run_on_node; -1: none
};

class ExpertProvider {
 public:
  virtual ~ExpertProvider() = default;
  // The router of `layer` has chosen: tokens_per_expert[e] tokens of this chunk go to expert e. Copies of the
  // chosen experts may start here, before the first acquire (prefetch).
  virtual void routed(const LayerWeights& layer, std::span<const int64_t> tokens_per_expert) = 0;
  // The device whose compute stream runs this layer's device work (the shared expert and the on_device
  // experts); nullptr: the layer runs on the host.
  virtual Backend* device(const LayerWeights& layer) = 0;
  // The weights (and buffers) to compute `expert` of `layer` for `tokens` tokens with; valid until the layer's
  // device work has finished. Experts are acquired one at a time, in expert order; acquire never waits for a
  // copy (device work waits on its stream instead).
  virtual ExpertUse acquire(const LayerWeights& layer, int64_t expert, int64_t tokens) = 0;
  // `done`: the launched work that reads the expert (on_device uses); its slot is not refilled before then.
  virtual void release(const LayerWeights& layer, int64_t expert, ComputeEvent done) = 0;
};

// Passes every call to another provider: the base of wrappers that observe, check or time some of the calls
// (benchmarks, tests) and override only those.
class ForwardingExpertProvider : public ExpertProvider {
 public:
  explicit ForwardingExpertProvider(ExpertProvider& inner) : inner_(inner) {}
  void routed(const LayerWeights& layer, std::span<const int64_t> tokens_per_expert) override {
    inner_.routed(layer, tokens_per_expert);
  }
  Backend* device(const LayerWeights& layer) override { return inner_.device(layer); }
  ExpertUse acquire(const LayerWeights& layer, int64_t expert, int64_t tokens) override {
    return inner_.acquire(layer, expert, tokens);
  }
  void release(const LayerWeights& layer, int64_t expert, ComputeEvent done) override {
    inner_.release(layer, expert, done);
  }

 protected:
  ExpertProvider& inner_;
};

}  // namespace ferry::runtime
