// The V4 MoE layer over a chunk (docs/forward-semantics.md, MOE), as ops: the sqrt-softplus router with hash
// routing in the first layers and biased top-k selection in the others, clamped SwiGLU routed experts and the
// shared experts, and the combine. Tokens are grouped by expert so that each expert's weights are read once per
// chunk. The host groups them (it reads the routing), the expert provider plans where each expert runs
// (moe_schedule.h), the layer's device computes its experts on its stream while the host computes the ones in
// RAM, and the outputs of every expert, kept per (token, choice), are combined in expert order: the same
// arithmetic whichever side computed what.
#include <algorithm>
#include <vector>

#include "planner/core/error.h"
#include "runtime/model/forward_parts.h"
#include "runtime/model/rank_exchange.h"

namespace ferry::runtime::detail {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// A counting sort of the chunk's n·k choices by expert: ws.expert_tokens[p] is the choice (t·k + i) at sorted
// position p, and expert e's tokens are positions offsets[e] … offsets[e+1]−1.
std::vector<int64_t> group_by_expert(const Chunk& ch, Workspace& ws) {
  const int64_t E = ch.c.n_routed_experts, choices = ch.n * ch.c.num_experts_per_tok;
  std::vector<int64_t> offsets(sz(E + 1), 0);
  for (int64_t i = 0; i < choices; ++i) ++offsets[sz(ws.route_ids[sz(i)] + 1)];
  for (int64_t e = 0; e < E; ++e) offsets[sz(e + 1)] += offsets[sz(e)];
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < choices; ++i) ws.expert_tokens[sz(fill[sz(ws.route_ids[sz(i)])]++)] = static_cast<int32_t>(i);
  return offsets;
}

// The router's scores and choice on the layer's device, read by the host, which groups them by expert.
std::vector<int64_t> route(const Chunk& ch, const LayerWeights& w, Workspace& ws, const float* xn) {
  const auto& c = ch.c;
  const int64_t E = c.n_routed_experts, k = c.num_experts_per_tok;
  OpStream& s = ch.ops;
  const PhaseScope phase(s.phase(), OpPhase::Router);
  s.run(ops::Linear{.w = w.gate, .x = xn, .n = ch.n, .y = ws.gate.data(), .bits = ch.bits});
  s.run(ops::Route{.scores = ws.gate.data(),
                   .n = ch.n,
                   .experts = E,
                   .k = k,
                   .bias = w.hash_routed ? nullptr : w.gate_bias.data(),
                   .tid2eid = w.hash_routed ? w.tid2eid.data() : nullptr,
                   .tokens = ch.tokens,
                   .scaling = c.routed_scaling_factor,
                   .ids = ws.route_ids.data(),
                   .weights = ws.route_w.data()});
  s.sync();
  return group_by_expert(ch, ws);
}

// Without a provider: every chosen expert (of this rank) is the checkpoint's, computed on the layer's device.
MoeSchedule own_schedule(const LayerWeights& w, std::span<const int64_t> tokens_per_expert, const RankExchange* ranks) {
  MoeSchedule s;
  s.layer = w.index;
  for (size_t e = 0; e < tokens_per_expert.size(); ++e) {
    if (tokens_per_expert[e] == 0 || (ranks && !ranks->computes_expert(w.index, static_cast<int64_t>(e)))) continue;
    ExpertTask t;
    t.expert = static_cast<int32_t>(e);
    t.tokens = tokens_per_expert[e];
    t.weights = w.experts[e];
    t.on_device = true;
    s.tasks.push_back(t);
  }
  return s;
}

// Runs one task over its tokens (sorted positions b … b+m−1), its outputs into eo's rows b … b+m−1: on the layer's
// device with the session's workspace, or on its host backend with the host's buffers (the session's belong to the
// device's work meanwhile), in the threads of the NUMA node holding the expert.
ComputeEvent run_task(const Chunk& ch, Workspace& ws, const ExpertTask& t, CopyEvent ready, int64_t b,
                      const float* xn) {
  const auto& c = ch.c;
  const int64_t d = c.hidden_size, m = t.tokens;
  const ExpertWeights& ew = t.weights;
  float* const out = ws.eo.data() + b * d;
  if (t.on_device) {
    ch.ops.run(ops::GatherRows{.src = xn,
                               .d = d,
                               .index = ws.expert_tokens.data() + b,
                               .div = c.num_experts_per_tok,
                               .m = m,
                               .dst = ws.xg.data()});
    ch.ops.run(ops::ExpertFfn{.w1 = ew.w1,
                              .w2 = ew.w2,
                              .w3 = ew.w3,
                              .x = ws.xg.data(),
                              .m = m,
                              .limit = c.swiglu_limit,
                              .gate = ws.eg.data(),
                              .up = ws.eu.data(),
                              .out = out,
                              .bits = ch.bits},
               ready, t.reads);
    return ch.ops.last();
  }
  FERRY_CHECK(t.backend && t.scratch.x, "expert provider: expert {} of layer runs on the host without its buffers",
              t.expert);
  const ExpertScratch& sc = t.scratch;
  OpProfile* profile = ch.ops.profile();
  const auto t0 = OpProfile::Clock::now();
  (void)t.backend->run(ops::GatherRows{
      .src = xn, .d = d, .index = ws.expert_tokens.data() + b, .div = c.num_experts_per_tok, .m = m, .dst = sc.x});
  (void)t.backend->run(ops::ExpertFfn{.w1 = ew.w1,
                                      .w2 = ew.w2,
                                      .w3 = ew.w3,
                                      .x = sc.x,
                                      .m = m,
                                      .limit = c.swiglu_limit,
                                      .gate = sc.gate,
                                      .up = sc.up,
                                      .out = sc.out,
                                      .bits = ch.bits});
  std::copy_n(sc.out, m * d, out);
  if (profile) profile->add(OpPhase::HostExperts, t0);
  return {};
}

// Plans the chosen experts this rank computes (every chosen expert in one process): where each runs.
MoeSchedule plan_experts(const Chunk& ch, const LayerWeights& w, ExpertProvider* experts, const RankExchange* ranks,
                         const std::vector<int64_t>& tokens_per_expert) {
  MoeSchedule plan = experts ? experts->schedule(w, tokens_per_expert) : own_schedule(w, tokens_per_expert, ranks);
  FERRY_CHECK(!plan.device || plan.device == &ch.ops.device(),
              "expert provider: layer {} computes its experts on another device than its attention", w.index);
  int64_t chosen = 0;
  for (size_t e = 0; e < tokens_per_expert.size(); ++e)
    chosen += tokens_per_expert[e] > 0 && (!ranks || ranks->computes_expert(w.index, static_cast<int64_t>(e)));
  FERRY_CHECK(static_cast<int64_t>(plan.tasks.size()) == chosen,
              "expert provider: layer {} planned {} experts of the {} chosen here", w.index, plan.tasks.size(), chosen);
  for (size_t i = 0; i < plan.tasks.size(); ++i) {
    const ExpertTask& t = plan.tasks[i];
    FERRY_CHECK(i == 0 || plan.tasks[i - 1].expert < t.expert, "expert provider: tasks out of expert order");
    FERRY_CHECK(t.tokens == tokens_per_expert[sz(t.expert)],
                "expert provider: task of expert {} covers {} tokens of {}", t.expert, t.tokens,
                tokens_per_expert[sz(t.expert)]);
  }
  return plan;
}

// Runs the planned experts in expert order, each one's outputs into its rows of ws.eo; between two, the other
// ranks' rows move (`ranks`).
void run_experts(const Chunk& ch, Workspace& ws, ExpertProvider* experts, RankExchange* ranks, MoeSchedule& plan,
                 const std::vector<int64_t>& offsets, const float* xn) {
  const PhaseScope phase(ch.ops.phase(), OpPhase::Experts);
  OpProfile* profile = ch.ops.profile();
  for (size_t i = 0; i < plan.tasks.size(); ++i) {
    const ExpertTask& t = plan.tasks[i];
    const auto t0 = OpProfile::Clock::now();
    const CopyEvent ready = experts ? experts->start(plan, i) : CopyEvent{};
    if (profile && experts) profile->add(OpPhase::Copies, t0);
    const ComputeEvent done = run_task(ch, ws, t, ready, offsets[sz(t.expert)], xn);
    if (experts) experts->issued(plan, i, done);
    if (ranks) ranks->progress();
  }
}

std::vector<int64_t> tokens_per_expert(const std::vector<int64_t>& offsets) {
  std::vector<int64_t> m(offsets.size() - 1);
  for (size_t e = 0; e < m.size(); ++e) m[e] = offsets[e + 1] - offsets[e];
  return m;
}

}  // namespace

void moe(const Chunk& ch, const LayerWeights& w, Workspace& ws, ExpertProvider* experts, RankExchange* ranks, float* xn,
         float* y) {
  const auto& c = ch.c;
  const int64_t n = ch.n, d = c.hidden_size, k = c.num_experts_per_tok;
  OpStream& s = ch.ops;

  // Route; the ranks holding experts of the layer without running it get its inputs and choices.
  const std::vector<int64_t> offsets = route(ch, w, ws, xn);
  if (ranks) {
    ranks->dispatch(w.index, xn, n, d, ws.route_ids.data(), k);
    ranks->expect_rows(w.index, ws.eo.data(), offsets, d);
  }
  MoeSchedule plan = plan_experts(ch, w, experts, ranks, tokens_per_expert(offsets));

  // Shared experts (one MLP n_shared wide, no clamp) straight into y, on the layer's device; without them the
  // combine writes y instead of adding to it. Then the routed experts: the device's queue on its stream, the
  // host's run at once beside them.
  const bool shared = c.n_shared_experts > 0;
  if (shared) {
    const PhaseScope phase(s.phase(), OpPhase::SharedExperts);
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
  }
  run_experts(ch, ws, experts, ranks, plan, offsets, xn);
  // The other ranks' experts' rows (arriving meanwhile), once this rank's are computed and sent.
  if (ranks) {
    s.sync();
    ranks->combine(w.index, ws.eo.data(), offsets, d);
  }

  // Combine, after every expert: each token's outputs weighted and summed in expert order, added to y.
  s.run(ops::MoeCombine{.expert_out = ws.eo.data(),
                        .order = ws.expert_tokens.data(),
                        .weights = ws.route_w.data(),
                        .n = n,
                        .k = k,
                        .d = d,
                        .y = y,
                        .add = shared});
}

void moe_for_peers(const Chunk& ch, const LayerWeights& w, Workspace& ws, ExpertProvider* experts,
                   RankExchange& ranks) {
  const int64_t d = ch.c.hidden_size;
  ranks.dispatch(w.index, ws.xn.data(), ch.n, d, ws.route_ids.data(), ch.c.num_experts_per_tok);
  const std::vector<int64_t> offsets = group_by_expert(ch, ws);
  MoeSchedule plan = plan_experts(ch, w, experts, &ranks, tokens_per_expert(offsets));
  run_experts(ch, ws, experts, &ranks, plan, offsets, ws.xn.data());
  ch.ops.sync();
  ranks.combine(w.index, ws.eo.data(), offsets, d);
}

}  // namespace ferry::runtime::detail
