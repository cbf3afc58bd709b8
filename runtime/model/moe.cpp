// The V4 MoE layer over a chunk (docs/forward-semantics.md, MOE), as ops: the sqrt-softplus router with hash
// routing in the first layers and biased top-k selection in the others, clamped SwiGLU routed experts and the
// shared expert, and the combine. Tokens are grouped by expert so that each expert's weights are read once per
// chunk. The host groups them (it reads the routing), the expert provider says where each expert runs, the
// layer's device computes its experts on its stream while the host computes the ones in RAM, and the outputs of
// every expert, kept per (token, choice), are combined in expert order: the same arithmetic whichever side
// computed what.
#include <algorithm>
#include <vector>

#include "planner/core/error.h"
#include "runtime/backend/host_ops.h"
#include "runtime/backend/numa_arenas.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// Counting sort of the chunk's n·k choices by expert: ws.expert_tokens[p] is the choice (t·k + i) at sorted
// position p, and expert e's tokens are positions offsets[e] … offsets[e+1]−1.
std::vector<int64_t> group_by_expert(const Chunk& ch, Workspace& ws, int64_t experts, int64_t k) {
  const int64_t choices = ch.n * k;
  std::vector<int64_t> offsets(sz(experts + 1), 0);
  for (int64_t i = 0; i < choices; ++i) ++offsets[sz(ws.route_ids[sz(i)] + 1)];
  for (int64_t e = 0; e < experts; ++e) offsets[sz(e + 1)] += offsets[sz(e)];
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < choices; ++i) ws.expert_tokens[sz(fill[sz(ws.route_ids[sz(i)])]++)] = static_cast<int32_t>(i);
  return offsets;
}

}  // namespace

void moe(const Chunk& ch, const LayerWeights& w, Workspace& ws, ExpertProvider* experts, const float* xn, float* y) {
  const auto& c = ch.c;
  const int64_t n = ch.n, d = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  OpStream& s = ch.ops;

  // Router, then the host reads its choice.
  s.run(ops::Linear{.w = w.gate, .x = xn, .n = n, .y = ws.gate.data(), .bits = ch.bits});
  s.run(ops::Route{.scores = ws.gate.data(),
                   .n = n,
                   .experts = E,
                   .k = k,
                   .bias = w.hash_routed ? nullptr : w.gate_bias.data(),
                   .tid2eid = w.hash_routed ? w.tid2eid.data() : nullptr,
                   .tokens = ch.tokens,
                   .scaling = c.routed_scaling_factor,
                   .ids = ws.route_ids.data(),
                   .weights = ws.route_w.data()});
  s.sync();
  const std::vector<int64_t> offsets = group_by_expert(ch, ws, E, k);
  if (experts) {
    std::vector<int64_t> tokens_per_expert(sz(E));
    for (int64_t e = 0; e < E; ++e) tokens_per_expert[sz(e)] = offsets[sz(e + 1)] - offsets[sz(e)];
    experts->routed(w, tokens_per_expert);
    Backend* dev = experts->device(w);
    FERRY_CHECK(!dev || dev == &s.device(), "expert provider: layer " + std::to_string(w.index) +
                                                " computes its experts on another device than its attention");
  }

  // Shared experts (one MLP n_shared wide, no clamp) straight into y, on the layer's device; without them the
  // combine writes y instead of adding to it.
  const bool shared = c.n_shared_experts > 0;
  if (shared)
    s.run(ops::ExpertFfn{.w1 = w.shared.w1,
                         .w2 = w.shared.w2,
                         .w3 = w.shared.w3,
                         .x = xn,
                         .m = n,
                         .limit = 0.0,
                         .gate = ws.eg.data(),
                         .up = ws.eu.data(),
                         .out = y,
                         .bits = ch.bits});

  // Routed experts, in expert order, each over the tokens that chose it (sorted positions b … b+m−1), its
  // outputs into eo's rows b … b+m−1.
  float* const out_rows = ws.eo.data();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = offsets[sz(e)], m = offsets[sz(e + 1)] - b;
    if (m == 0) continue;
    const ops::GatherRows gather{.src = xn, .d = d, .index = ws.expert_tokens.data() + b, .div = k, .m = m};
    if (!experts) {
      s.run(ops::GatherRows{gather.src, gather.d, gather.index, gather.div, gather.m, ws.xg.data()});
      const ExpertWeights& ew = w.experts[sz(e)];
      s.run(ops::ExpertFfn{.w1 = ew.w1,
                           .w2 = ew.w2,
                           .w3 = ew.w3,
                           .x = ws.xg.data(),
                           .m = m,
                           .limit = c.swiglu_limit,
                           .gate = ws.eg.data(),
                           .up = ws.eu.data(),
                           .out = out_rows + b * d,
                           .bits = ch.bits});
      continue;
    }
    const ExpertUse use = experts->acquire(w, e, m);
    const ExpertWeights& ew = *use.weights;
    if (use.on_device) {
      s.run(ops::GatherRows{gather.src, gather.d, gather.index, gather.div, gather.m, ws.xg.data()});
      s.run(ops::ExpertFfn{.w1 = ew.w1,
                           .w2 = ew.w2,
                           .w3 = ew.w3,
                           .x = ws.xg.data(),
                           .m = m,
                           .limit = c.swiglu_limit,
                           .gate = ws.eg.data(),
                           .up = ws.eu.data(),
                           .out = out_rows + b * d,
                           .bits = ch.bits},
            use.ready, use.reads);
      experts->release(w, e, s.last());
      continue;
    }
    // On the host, beside the device's work, next to its memory: the threads of the NUMA node holding the expert
    // (offload/host_expert_store.h), with the host's own buffers (the session's belong to the device's work).
    FERRY_CHECK(use.scratch, "expert provider: an expert on the host needs its own buffers");
    const ExpertScratch& sc = *use.scratch;
    run_on_node(use.host_node, [&] {
      run_on_host(ops::GatherRows{gather.src, gather.d, gather.index, gather.div, gather.m, sc.x});
      run_on_host(ops::ExpertFfn{.w1 = ew.w1,
                                 .w2 = ew.w2,
                                 .w3 = ew.w3,
                                 .x = sc.x,
                                 .m = m,
                                 .limit = c.swiglu_limit,
                                 .gate = sc.gate,
                                 .up = sc.up,
                                 .out = sc.out,
                                 .bits = ch.bits});
    });
    std::copy_n(sc.out, m * d, out_rows + b * d);
    experts->release(w, e, {});
  }

  // Combine, after every expert: each token's outputs weighted and summed in expert order, added to y.
  s.run(ops::MoeCombine{.expert_out = out_rows,
                        .order = ws.expert_tokens.data(),
                        .weights = ws.route_w.data(),
                        .n = n,
                        .k = k,
                        .d = d,
                        .y = y,
                        .add = shared});
}

}  // namespace ferry::runtime::detail
