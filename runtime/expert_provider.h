// Where the MoE layer finds each routed expert's weights, and with which buffers it computes it. The forward
// pass asks; offload/ answers from the Plan: an expert resident on the device, a GPU expert-cache slot, a
// stream slot it was just copied into, or the host copy computed by the CPU with the host's own buffers.
// Without a provider (a CPU-only run) every expert is the checkpoint's and uses the session's workspace.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/model_weights.h"

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
  int host_node = -1;  // NUMA node (tbb's id) of the weights the CPU computes from, for run_on_node; -1: none
};

class ExpertProvider {
 public:
  virtual ~ExpertProvider() = default;
  // The router of `layer` has chosen: tokens_per_expert[e] tokens of this chunk go to expert e. Copies of the
  // chosen experts may start here, before the first acquire (prefetch).
  virtual void routed(const LayerWeights& layer, std::span<const int64_t> tokens_per_expert) = 0;
  // The weights (and buffers) to compute `expert` of `layer` for `tokens` tokens with; valid until release().
  // Experts are acquired one at a time, in expert order.
  virtual ExpertUse acquire(const LayerWeights& layer, int64_t expert, int64_t tokens) = 0;
  virtual void release(const LayerWeights& layer, int64_t expert) = 0;
};

}  // namespace ferry::runtime
