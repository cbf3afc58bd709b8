// The Plan's expert homes and layer runs: counting them per node, checking a plan's (perhaps edited) homes,
// and one node's view of a plan.
#include <fmt/format.h>
#include <algorithm>
#include <string>
#include <vector>

#include "planner/core/error.h"
#include "planner/plan.h"

namespace ferry::planner {
namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

std::string range_text(const ExpertHome& h) {
  std::string s = "experts " + std::to_string(h.first);
  if (h.count > 1) s += "-" + std::to_string(h.last());
  if (h.count > 1 && h.step > 1) s += " step " + std::to_string(h.step);
  return s;
}

void check_runs(const Plan& p, const LayerPlan& l, const std::string& where) {
  std::vector<bool> node_runs(sz(std::max(1, p.hardware.nodes)), false);
  for (const LayerRun& r : l.runs) {
    FERRY_CHECK(r.device >= 0 && sz(r.device) < p.devices.size(), "{}: runs on a device that does not exist", where);
    const DevicePlan& d = p.devices[sz(r.device)];
    FERRY_CHECK(d.node >= 0 && sz(d.node) < node_runs.size() && !node_runs[sz(d.node)],
                "{}: more than one run on node {}", where, d.node);
    node_runs[sz(d.node)] = true;
    FERRY_CHECK(r.cache_slots >= 0, "{}: negative cache_slots on {}", where, d.id);
    FERRY_CHECK(r.cache_slots == 0 || d.kind == DeviceKind::Gpu, "{}: cache slots on {}, not a GPU", where, d.id);
  }
}

void check_layer_homes(const Plan& p, const LayerPlan& l, const std::string& where) {
  const int64_t n = l.n_experts();
  std::vector<bool> homed(sz(n), false);
  for (const ExpertHome& h : l.experts) {
    const std::string what = where + " " + range_text(h);
    FERRY_CHECK(h.count >= 1 && h.step >= 1 && h.first >= 0, "{}: count and step must be >= 1, first >= 0", what);
    FERRY_CHECK(h.device >= 0 && sz(h.device) < p.devices.size(), "{}: held on a device that does not exist", what);
    const DevicePlan& holder = p.devices[sz(h.device)];
    if (h.cache >= 0) {
      FERRY_CHECK(holder.kind == DeviceKind::Host, "{}: resident on {} and cached too", what, holder.id);
      FERRY_CHECK(sz(h.cache) < p.devices.size(), "{}: cached on a device that does not exist", what);
      const DevicePlan& gpu = p.devices[sz(h.cache)];
      const bool runs =
          std::any_of(l.runs.begin(), l.runs.end(), [&](const LayerRun& r) { return r.device == h.cache; });
      FERRY_CHECK(gpu.kind == DeviceKind::Gpu && gpu.node == holder.node && runs,
                  "{}: cache {} is not a GPU of {}'s node that runs the layer", what, gpu.id, holder.id);
    }
    FERRY_CHECK(h.last() < n,
                "{}: beyond expert {}, the last of the {} the homes count (each expert needs exactly one home)", what,
                n - 1, n);
    for (int64_t e = h.first; e <= h.last(); e += h.step) {
      FERRY_CHECK(!homed[sz(e)], "{}: expert {} has two homes", where, e);
      homed[sz(e)] = true;
    }
  }
}

// The runs and homes the plan's split makes: a run on every node (Experts), or one run (a pipeline), and with
// Layers every expert on the runner's node.
void check_split(const Plan& p, const LayerPlan& l, const std::string& where) {
  const std::string_view split = split_name(p.split);
  if (p.split == Split::Experts) {
    FERRY_CHECK(l.runs.size() == sz(p.hardware.nodes), "{}: split {} runs every layer on every node, this one on {}",
                where, split, l.runs.size());
    return;
  }
  FERRY_CHECK(l.runs.size() == 1, "{}: split {} runs each layer on one node, this one on {}", where, split,
              l.runs.size());
  if (p.split != Split::Layers) return;
  const int runner = p.devices[sz(l.runs.front().device)].node;
  for (const ExpertHome& h : l.experts)
    FERRY_CHECK(p.devices[sz(h.device)].node == runner,
                "{} {}: split {} homes a layer's experts on its runner's node {}, these are on {}", where,
                range_text(h), split, runner, p.devices[sz(h.device)].id);
}

}  // namespace

int64_t LayerPlan::n_experts() const {
  int64_t n = 0;
  for (const ExpertHome& h : experts) n += h.count;
  return n;
}

const ExpertHome* LayerPlan::home_of(int64_t expert) const {
  for (const ExpertHome& h : experts)
    if (h.contains(expert)) return &h;
  return nullptr;
}

ExpertCounts expert_counts(const Plan& plan, const LayerPlan& l, int node) {
  ExpertCounts c;
  for (const ExpertHome& h : l.experts) {
    const DevicePlan& d = plan.devices[sz(h.device)];
    if (d.node != node) continue;
    c.held += h.count;
    (d.kind == DeviceKind::Gpu ? c.on_gpu : c.in_ram) += h.count;
  }
  if (const LayerRun* r = run_on_node(plan, l, node)) c.cache_slots = r->cache_slots;
  return c;
}

const LayerRun* run_on_node(const Plan& plan, const LayerPlan& l, int node) {
  for (const LayerRun& r : l.runs)
    if (plan.devices[sz(r.device)].node == node) return &r;
  return nullptr;
}

void check_homes(const Plan& plan) {
  FERRY_CHECK(plan.split != Split::Auto, "plan: split is auto; a plan names the layout it placed");
  for (const LayerPlan& l : plan.layers) {
    const std::string where = fmt::format("plan: layer {}", l.layer);
    check_runs(plan, l, where);
    check_layer_homes(plan, l, where);
    check_split(plan, l, where);
  }
}

Plan plan_for_node(const Plan& plan, int node) {
  FERRY_CHECK(node >= 0 && node < plan.hardware.nodes, "plan: no node {} in a plan of {} nodes", node,
              plan.hardware.nodes);
  Plan v = plan;
  v.devices.clear();
  v.shortfalls.clear();
  std::vector<int> renumber(plan.devices.size(), -1);
  for (size_t i = 0; i < plan.devices.size(); ++i)
    if (plan.devices[i].node == node) {
      renumber[i] = static_cast<int>(v.devices.size());
      v.devices.push_back(plan.devices[i]);
    }
  for (LayerPlan& l : v.layers) {
    std::erase_if(l.runs, [&](const LayerRun& r) { return renumber[sz(r.device)] < 0; });
    for (LayerRun& r : l.runs) r.device = renumber[sz(r.device)];
    std::erase_if(l.experts, [&](const ExpertHome& h) { return renumber[sz(h.device)] < 0; });
    for (ExpertHome& h : l.experts) {
      h.device = renumber[sz(h.device)];
      if (h.cache >= 0) h.cache = renumber[sz(h.cache)];  // on the holder's node (check_homes)
    }
  }
  v.fits = true;
  for (const DevicePlan& d : v.devices) v.fits = v.fits && !d.over();
  for (const Shortfall& s : plan.shortfalls)
    if (std::any_of(v.devices.begin(), v.devices.end(), [&](const DevicePlan& d) { return d.id == s.device; }))
      v.shortfalls.push_back(s);
  return v;
}

int view_node(const Plan& plan) {
  FERRY_CHECK(!plan.devices.empty(), "plan: no devices");
  const int node = plan.devices.front().node;
  for (const DevicePlan& d : plan.devices)
    FERRY_CHECK(d.node == node, "plan: devices on nodes {} and {}; bind one node's view (plan_for_node)", node, d.node);
  return node;
}

}  // namespace ferry::planner
