// The V4 MoE layer over a chunk (docs/forward-semantics.md, MOE): sqrt-softplus router with hash routing in
// the first layers and biased top-k selection in the others, clamped SwiGLU routed experts and the shared
// expert. Tokens are grouped by expert so that each expert's weights are read once per chunk.
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "planner/core/error.h"
#include "runtime/backend/numa_arenas.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/model/forward_parts.h"

namespace ferry::runtime::detail {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// SwiGLU of one expert on m gathered tokens: out = w2 · (silu(min(g, L)) ⊙ clamp(u, −L, L)). The route weight
// is applied to the output, as the contract writes it: w2's input is rounded (MXFP4 activations), and a
// rounding does not commute with a scale that is not a power of two.
void swiglu(const ExpertWeights& e, const float* x, int64_t m, int64_t d, int64_t inter, double limit, float* gate,
            float* up, float* out) {
  // Routed experts (MXFP4): w1 and w3 read the same input, so it is rounded once for both.
  std::vector<cpu::Mxfp4Activation> rounded;
  if (e.w1.format == core::WeightFormat::MXFP4 && e.w3.format == core::WeightFormat::MXFP4)
    rounded = cpu::round_mxfp4_inputs(x, m, d, d);
  const auto* shared_rounding = rounded.empty() ? nullptr : &rounded;
  cpu::linear(e.w1, x, m, d, gate, inter, shared_rounding);
  cpu::linear(e.w3, x, m, d, up, inter, shared_rounding);
  const float L = static_cast<float>(limit);
  for (int64_t t = 0; t < m; ++t) {
    float* g = gate + t * inter;
    const float* u = up + t * inter;
    for (int64_t k = 0; k < inter; ++k) {
      float gk = g[k], uk = u[k];
      if (L > 0) {
        gk = std::min(gk, L);
        uk = std::clamp(uk, -L, L);
      }
      g[k] = cpu::silu(gk) * uk;
    }
  }
  cpu::linear(e.w2, gate, m, inter, out, d);
}

}  // namespace

void moe(const Chunk& ch, const LayerWeights& w, Workspace& ws, ExpertProvider* experts, const float* xn, float* y) {
  const auto& c = ch.c;
  const int64_t n = ch.n, d = c.hidden_size, E = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t inter = c.moe_intermediate_size;

  // Router.
  cpu::linear(w.gate, xn, n, d, ws.gate.data(), E);
  tbb::parallel_for(int64_t{0}, n, [&](int64_t t) {
    float* sc = &ws.gate[sz(t * E)];
    for (int64_t e = 0; e < E; ++e) sc[e] = std::sqrt(cpu::softplus(sc[e]));
    int32_t* ids = &ws.route_ids[sz(t * k)];
    if (w.hash_routed) {
      for (int64_t i = 0; i < k; ++i) ids[i] = w.tid2eid[sz(ch.tokens[t] * k + i)];
    } else {
      std::vector<int32_t> order(sz(E));
      std::iota(order.begin(), order.end(), 0);
      auto biased = [&](int32_t e) { return sc[e] + w.gate_bias[sz(e)]; };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        const float sa = biased(a), sb = biased(b);
        return sa != sb ? sa > sb : a < b;
      });
      for (int64_t i = 0; i < k; ++i) ids[i] = order[sz(i)];
    }
    float sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += sc[ids[i]];
    for (int64_t i = 0; i < k; ++i)
      ws.route_w[sz(t * k + i)] = sc[ids[i]] / sum * static_cast<float>(c.routed_scaling_factor);
  });

  // Tokens grouped by expert: sorted position p holds choice expert_tokens[p] = t·k + i, and its output row
  // eo[p]; pos_of[t·k + i] = p.
  std::vector<int64_t> count(sz(E + 1), 0);
  for (int64_t i = 0; i < n * k; ++i) ++count[sz(ws.route_ids[sz(i)] + 1)];
  for (int64_t e = 0; e < E; ++e) count[sz(e + 1)] += count[sz(e)];
  std::vector<int64_t> fill(count.begin(), count.end() - 1), pos_of(sz(n * k));
  for (int64_t i = 0; i < n * k; ++i) {
    const int64_t p = fill[sz(ws.route_ids[sz(i)])]++;
    ws.expert_tokens[sz(p)] = static_cast<int32_t>(i);
    pos_of[sz(i)] = p;
  }
  if (experts) {
    std::vector<int64_t> tokens_per_expert(sz(E));
    for (int64_t e = 0; e < E; ++e) tokens_per_expert[sz(e)] = count[sz(e + 1)] - count[sz(e)];
    experts->routed(w, tokens_per_expert);
  }

  // One routed expert over its m tokens (sorted positions b … b+m−1), its outputs into eo's rows b … b+m−1.
  float* const out_rows = ws.eo.data();
  auto run_expert = [&, out_rows](const ExpertWeights& ew, const ExpertScratch* scratch, int64_t b, int64_t m) {
    float* x = scratch ? scratch->x : ws.xg.data();
    float* gate = scratch ? scratch->gate : ws.eg.data();
    float* up = scratch ? scratch->up : ws.eu.data();
    float* out = scratch ? scratch->out : out_rows + b * d;
    for (int64_t i = 0; i < m; ++i) std::copy_n(xn + (ws.expert_tokens[sz(b + i)] / k) * d, d, x + i * d);
    swiglu(ew, x, m, d, inter, c.swiglu_limit, gate, up, out);
    if (out != out_rows + b * d) std::copy_n(out, m * d, out_rows + b * d);
  };

  // The device's work is launched on its compute stream and the host computes its experts meanwhile. Launched
  // work reads this frame's locals: whatever happens, the device has finished before the frame is left.
  Backend* dev = experts ? experts->device(w) : nullptr;
  KernelEvent last;
  struct Drain {
    Backend* dev;
    const KernelEvent& last;
    ~Drain() {
      if (!dev) return;
      try {
        dev->wait(last);
      } catch (...) {  // the error reaches the caller through the wait below
      }
    }
  } drain{dev, last};

  // Shared expert (no clamp) straight into y.
  auto shared = [&] { swiglu(w.shared, xn, n, d, inter, 0.0, ws.eg.data(), ws.eu.data(), y); };
  if (dev) {
    last = dev->launch(shared);
  } else {
    shared();
  }

  // Routed experts, in expert order, each over the tokens that chose it.
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = count[sz(e)], m = count[sz(e + 1)] - b;
    if (m == 0) continue;
    if (!experts) {
      run_expert(w.experts[sz(e)], nullptr, b, m);
      continue;
    }
    const ExpertUse use = experts->acquire(w, e, m);
    if (use.on_device) {
      FERRY_CHECK(dev, "expert provider: layer " + std::to_string(w.index) + " has no device for an expert on it");
      const ExpertWeights* ew = use.weights;
      const ExpertScratch* scratch = use.scratch;
      last = dev->launch([&run_expert, ew, scratch, b, m] { run_expert(*ew, scratch, b, m); }, use.ready, use.reads);
      experts->release(w, e, last);
    } else {
      // The session's buffers belong to the device's work while it runs.
      FERRY_CHECK(!dev || use.scratch, "expert provider: an expert on the host needs its own buffers");
      // Next to its memory: the threads of the NUMA node holding the expert (offload/host_expert_store.h).
      run_on_node(use.host_node, [&] { run_expert(*use.weights, use.scratch, b, m); });
      experts->release(w, e, {});
    }
  }
  if (dev) dev->wait(last);

  // Combine: each token's expert outputs weighted and summed in expert order (ascending sorted positions),
  // then added to the shared expert's output — the same order whichever side computed each expert.
  FERRY_CHECK(k <= 64, "num_experts_per_tok above 64");
  tbb::parallel_for(int64_t{0}, n, [&](int64_t t) {
    int64_t p[64];
    std::copy_n(pos_of.begin() + t * k, k, p);
    std::sort(p, p + k);
    float wt[64];
    const float* rows[64];
    for (int64_t i = 0; i < k; ++i) {
      wt[i] = ws.route_w[sz(ws.expert_tokens[sz(p[i])])];
      rows[i] = out_rows + p[i] * d;
    }
    float* yt = y + t * d;
    for (int64_t j = 0; j < d; ++j) {
      float acc = 0.0f;
      for (int64_t i = 0; i < k; ++i) acc += wt[i] * rows[i][j];
      yt[j] += acc;
    }
  });
}

}  // namespace ferry::runtime::detail
