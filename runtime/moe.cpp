// The V4 MoE layer over a chunk (docs/forward-semantics.md, MOE): sqrt-softplus router with hash routing in
// the first layers and biased top-k selection in the others, clamped SwiGLU routed experts and the shared
// expert. Tokens are grouped by expert so that each expert's weights are read once per chunk.
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "planner/error.h"
#include "runtime/cpu/linear.h"
#include "runtime/forward_parts.h"

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
  if (e.w1.format == cpu::WeightFormat::MXFP4 && e.w3.format == cpu::WeightFormat::MXFP4)
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

  // Shared expert (no clamp) straight into y.
  swiglu(w.shared, xn, n, d, inter, 0.0, ws.eg.data(), ws.eu.data(), y);

  // Routed experts, in expert order, each over the tokens that chose it.
  std::vector<int64_t> count(sz(E + 1), 0);
  for (int64_t i = 0; i < n * k; ++i) ++count[sz(ws.route_ids[sz(i)] + 1)];
  for (int64_t e = 0; e < E; ++e) count[sz(e + 1)] += count[sz(e)];
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t i = 0; i < n * k; ++i) ws.expert_tokens[sz(fill[sz(ws.route_ids[sz(i)])]++)] = static_cast<int32_t>(i);
  std::fill(ws.tmp.begin(), ws.tmp.begin() + n * d, 0.0f);
  std::vector<float> rw(sz(n));
  if (experts) {
    std::vector<int64_t> tokens_per_expert(sz(E));
    for (int64_t e = 0; e < E; ++e) tokens_per_expert[sz(e)] = count[sz(e + 1)] - count[sz(e)];
    experts->routed(w, tokens_per_expert);
  }
  const ExpertScratch own{ws.xg.data(), ws.eg.data(), ws.eu.data(), ws.eo.data()};
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = count[sz(e)], m = count[sz(e + 1)] - b;
    if (m == 0) continue;
    const ExpertUse use = experts ? experts->acquire(w, e, m) : ExpertUse{&w.experts[sz(e)], nullptr};
    const ExpertScratch& s = use.scratch ? *use.scratch : own;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t slot = ws.expert_tokens[sz(b + i)], t = slot / k;
      std::copy_n(xn + t * d, d, s.x + i * d);
      rw[sz(i)] = ws.route_w[sz(slot)];
    }
    swiglu(*use.weights, s.x, m, d, inter, c.swiglu_limit, s.gate, s.up, s.out);
    if (experts) experts->release(w, e);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = ws.expert_tokens[sz(b + i)] / k;
      float* acc = &ws.tmp[sz(t * d)];
      const float* o = s.out + i * d;
      const float wk = rw[sz(i)];
      for (int64_t j = 0; j < d; ++j) acc[j] += wk * o[j];
    }
  }
  for (int64_t i = 0; i < n * d; ++i) y[i] += ws.tmp[sz(i)];
}

}  // namespace ferry::runtime::detail
