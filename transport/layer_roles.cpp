#include "transport/layer_roles.h"

#include <algorithm>
#include <map>

#include "planner/core/error.h"

namespace ferry::transport {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

std::vector<ExpertRange> holders_of(const planner::Plan& plan, const planner::LayerPlan& lp) {
  std::map<int, ExpertRange> by_node;
  std::map<int, int64_t> count;
  for (const planner::ExpertHome& h : lp.experts) {
    const int node = plan.devices.at(sz(h.device)).node;
    auto [it, fresh] = by_node.try_emplace(node, ExpertRange{node, h.first, h.last()});
    if (!fresh) {
      it->second.first = std::min(it->second.first, h.first);
      it->second.last = std::max(it->second.last, h.last());
    }
    count[node] += h.count;
  }
  std::vector<ExpertRange> holders;
  for (const auto& [node, range] : by_node) {
    FERRY_CHECK(range.last - range.first + 1 == count[node],
                "plan: layer {} homes node {}'s experts as several ranges; ranks exchange one contiguous range each",
                lp.layer, node);
    holders.push_back(range);
  }
  std::sort(holders.begin(), holders.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return holders;
}

}  // namespace

std::vector<LayerRoles> layer_roles(const planner::Plan& plan, int ranks) {
  FERRY_CHECK(plan.hardware.nodes == ranks, "the plan is for {} nodes, this run has {} ranks (one rank per node)",
              plan.hardware.nodes, ranks);
  std::vector<LayerRoles> roles;
  for (const planner::LayerPlan& lp : plan.layers) {
    if (lp.mtp) continue;
    FERRY_CHECK(lp.layer == static_cast<int>(roles.size()), "plan: layer {} is out of order", lp.layer);
    LayerRoles r;
    for (const planner::LayerRun& run : lp.runs) r.runners.push_back(plan.devices.at(sz(run.device)).node);
    std::sort(r.runners.begin(), r.runners.end());
    FERRY_CHECK(!r.runners.empty(), "plan: no node runs layer {}", lp.layer);
    r.holders = holders_of(plan, lp);
    roles.push_back(std::move(r));
  }
  return roles;
}

}  // namespace ferry::transport
