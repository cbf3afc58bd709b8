// The layout over several nodes (plan.h Split): forced by the request, or chosen by the cost model among the
// layouts that fit. The trade (../shared/spec/hardware.md): expert parallel aggregates the nodes' memory
// bandwidth for the routed experts but pays a dispatch/combine per MoE layer; a pipeline reads every layer's
// experts on one node but crosses the network only at its stage boundaries, which slow links favour (a
// published 2-node comparison: pipeline 15.1 vs tensor parallel 13.9 tok/s decode).
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string>

#include "planner/core/error.h"
#include "planner/plan.h"

namespace ferry::planner {
namespace {

constexpr std::array<Split, 3> kLayouts{Split::Experts, Split::Layers, Split::LayersExperts};

int64_t shortfall(const Plan& p) {
  int64_t s = 0;
  for (const DevicePlan& d : p.devices) s += std::max<int64_t>(0, d.used() - d.capacity);
  return s;
}

// Decode first; prefill breaks a tie.
bool faster(const Plan& a, const Plan& b) {
  if (a.cost.decode_tok_s != b.cost.decode_tok_s) return a.cost.decode_tok_s > b.cost.decode_tok_s;
  return a.cost.prefill_tok_s > b.cost.prefill_tok_s;
}

std::string others_text(const std::array<Plan, 3>& placed, const Plan& best) {
  std::string s;
  for (const Plan& p : placed) {
    if (p.split == best.split) continue;
    s += s.empty() ? "" : "; ";
    s += p.fits ? fmt::format("{} {:.1f}", split_name(p.split), p.cost.decode_tok_s)
                : fmt::format("{} does not fit", split_name(p.split));
  }
  return s;
}

}  // namespace

std::string_view split_name(Split s) {
  switch (s) {
    case Split::Auto: return "auto";
    case Split::Experts: return "experts";
    case Split::Layers: return "layers";
    case Split::LayersExperts: return "layers+experts";
  }
  return "?";
}

std::optional<Split> split_from_name(std::string_view name) {
  for (Split s : {Split::Auto, Split::Experts, Split::Layers, Split::LayersExperts})
    if (split_name(s) == name) return s;
  return std::nullopt;
}

Plan place(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options, KvType kv) {
  if (hw.nodes == 1) {
    Plan p = place_as(spec, hw, options, kv, Split::Experts);
    p.split_reason = "one node: nothing to split";
    return p;
  }
  if (options.split != Split::Auto) {
    Plan p = place_as(spec, hw, options, kv, options.split);
    p.split_reason = fmt::format("--split {}", split_name(options.split));
    return p;
  }
  std::array<Plan, 3> placed;
  for (size_t i = 0; i < kLayouts.size(); ++i) {
    placed[i] = place_as(spec, hw, options, kv, kLayouts[i]);
    estimate_cost(spec, placed[i]);
  }
  const Plan* best = nullptr;
  for (const Plan& p : placed)
    if (p.fits && (!best || faster(p, *best))) best = &p;
  if (best) {
    Plan p = *best;
    p.split_reason = fmt::format("auto: the fastest layout that fits, decode {:.1f} tok/s ({})", p.cost.decode_tok_s,
                                 others_text(placed, p));
    return p;
  }
  for (const Plan& p : placed)
    if (!best || shortfall(p) < shortfall(*best)) best = &p;
  Plan p = *best;
  p.split_reason = "auto: no layout fits; the one short by the fewest bytes";
  return p;
}

}  // namespace ferry::planner
