// make_plan: validate the request, choose the KV type, place, estimate, and when something does not fit, find
// the nearest configurations that do.
#include "planner/plan.h"

#include <algorithm>
#include <string>

#include "planner/core/error.h"
#include "planner/core/units.h"

namespace ferry::planner {
namespace {

void validate(const ModelSpec& spec, const Hardware& hw, const PlanOptions& o) {
  const int64_t max_ctx = spec.config.max_position_embeddings;
  if (o.ctx < 0) FERRY_THROW("--ctx must be positive, got {}", o.ctx);
  if (o.ctx > max_ctx)
    FERRY_THROW("--ctx {} exceeds {}'s maximum context of {} tokens", o.ctx, spec.config.name, max_ctx);
  if (o.parallel < 1 || o.parallel > 4096) FERRY_THROW("--parallel must be in [1, 4096], got {}", o.parallel);
  if (o.ubatch < 1 || o.ubatch > 65536) FERRY_THROW("--ubatch must be in [1, 65536], got {}", o.ubatch);
  if (o.resident_chunk < 1) FERRY_THROW("resident chunk must be at least 1 token, got {}", o.resident_chunk);
  if (o.expert_cache == ExpertCacheMode::Slots &&
      (o.expert_cache_slots < 0 || o.expert_cache_slots > spec.config.n_routed_experts))
    FERRY_THROW("--expert-cache slots must be in [0, {}], got {}", spec.config.n_routed_experts, o.expert_cache_slots);
  if (o.expert_hit_rate > 1) FERRY_THROW("--expert-hit-rate must be in [0, 1]");
  if (hw.nodes < 1 || hw.nodes > 1024) FERRY_THROW("--nodes must be in [1, 1024], got {}", hw.nodes);
  if (hw.host.ram_bytes <= 0) FERRY_THROW("host RAM must be positive");
  if (hw.host.numa_nodes < 1 || hw.host.numa_nodes > 64)
    FERRY_THROW("--numa must be in [1, 64], got {}", hw.host.numa_nodes);
  if (hw.host.memory_bandwidth <= 0) FERRY_THROW("--host-bw must be positive");
  for (const auto& g : hw.gpus)
    if (g.free_bytes <= 0) FERRY_THROW("GPU {} has no free memory", g.name);
}

// Longest context (<= the model's maximum) for which `fits` holds; 0 when even one token does not fit.
template <class Fits>
int64_t longest_fitting(int64_t max_ctx, Fits fits) {
  if (!fits(1)) return 0;
  if (fits(max_ctx)) return max_ctx;
  int64_t lo = 1, hi = max_ctx;  // fits(lo), !fits(hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

void suggest(const ModelSpec& spec, const Hardware& hw, Plan& plan) {
  const PlanOptions& o = plan.options;
  auto fits_with = [&](const Hardware& h, const PlanOptions& opt, KvType kv) { return place(spec, h, opt, kv).fits; };

  for (const auto& f : plan.kv_fits)
    if (f.max_ctx == o.ctx && f.type != plan.kv_type)
      plan.suggestions.push_back("--kv-type " + std::string(kv_type_name(f.type)) + " (KV cache " +
                                 core::format_bytes(f.bytes_at_ctx) + ")");
  for (const auto& f : plan.kv_fits)
    if (f.type == plan.kv_type && f.max_ctx > 0)
      plan.suggestions.push_back("--ctx " + std::to_string(f.max_ctx) + " (the longest context that fits with " +
                                 std::string(kv_type_name(f.type)) + ")");
  if (o.split != Split::Auto && hw.nodes > 1) {
    PlanOptions any = o;
    any.split = Split::Auto;
    const Plan other = place(spec, hw, any, plan.kv_type);
    if (other.fits)
      plan.suggestions.push_back("--split " + std::string(split_name(other.split)) + " (the fastest layout that fits)");
  }
  for (int64_t ub = o.ubatch / 2; ub >= 16; ub /= 2) {
    PlanOptions smaller = o;
    smaller.ubatch = ub;
    if (fits_with(hw, smaller, plan.kv_type)) {
      plan.suggestions.push_back("--ubatch " + std::to_string(ub) + " (smaller prefill workspace)");
      break;
    }
  }
  for (int nodes = hw.nodes + 1; nodes <= std::max(64, hw.nodes * 2); ++nodes) {
    Hardware more = hw;
    more.nodes = nodes;
    if (fits_with(more, o, plan.kv_type)) {
      plan.suggestions.push_back("--nodes " + std::to_string(nodes) + " (routed experts sharded across " +
                                 std::to_string(nodes) + " nodes' RAM)");
      break;
    }
  }
  // More host RAM: the shortfall on the host devices, spread over the NUMA nodes.
  int64_t host_short = 0;
  for (const auto& d : plan.devices)
    if (d.kind == DeviceKind::Host && d.node == 0) host_short += std::max<int64_t>(0, d.used() - d.capacity);
  if (host_short > 0) {
    Hardware more = hw;
    more.host.ram_bytes = hw.host.ram_bytes + host_short;
    more.host.ram_bytes = (more.host.ram_bytes + core::kGiB - 1) / core::kGiB * core::kGiB;
    if (fits_with(more, o, plan.kv_type))
      plan.suggestions.push_back("--host-ram " + std::to_string(more.host.ram_bytes / core::kGiB) +
                                 "GiB (or more RAM per node)");
  }
}

}  // namespace

// A bigger chunk must gain 5%: the smallest that is about as fast keeps the workspaces small.
int64_t choose_prefill_chunk(const ModelSpec& spec, const Hardware& hw, const PlanOptions& o, KvType kv) {
  Plan base = place(spec, hw, o, kv);
  if (!base.fits) return o.ubatch;
  estimate_cost(spec, base);
  int64_t best = o.ubatch;
  double best_rate = base.cost.prefill_full_tok_s;
  for (int64_t u = 2 * o.ubatch; u <= std::min(kMaxPrefillChunk, o.ctx); u *= 2) {
    PlanOptions p = o;
    p.ubatch = u;
    Plan cand = place(spec, hw, p, kv);
    if (!cand.fits) break;
    estimate_cost(spec, cand);
    if (cand.cost.decode_tok_s < 0.95 * base.cost.decode_tok_s) break;
    if (cand.cost.prefill_full_tok_s > 1.05 * best_rate) {
      best = u;
      best_rate = cand.cost.prefill_full_tok_s;
    }
  }
  return best;
}

Plan make_plan(const ModelSpec& spec, const Hardware& hw, const PlanOptions& options) {
  validate(spec, hw, options);
  PlanOptions o = options;
  if (o.ctx == 0) o.ctx = spec.config.max_position_embeddings;
  const int64_t max_ctx = spec.config.max_position_embeddings;

  std::vector<KvFit> fits;
  for (KvType t : kKvTypesByFidelity) {
    KvFit f;
    f.type = t;
    f.bytes_at_ctx = kv_total(kv_cache_bytes(spec.config, t, o.ctx, o.parallel, o.mtp));
    f.max_ctx = longest_fitting(max_ctx, [&](int64_t ctx) {
      PlanOptions p = o;
      p.ctx = ctx;
      return place(spec, hw, p, t).fits;
    });
    fits.push_back(f);
  }

  KvType kv = o.kv_type.value_or(default_kv_type(spec.config));
  if (o.kv_auto) {
    kv = kKvTypesByFidelity.back();
    for (const auto& f : fits)
      if (f.max_ctx >= o.ctx) {
        kv = f.type;
        break;
      }
  }
  if (o.choose_ubatch) o.ubatch = choose_prefill_chunk(spec, hw, o, kv);
  Plan plan = place(spec, hw, o, kv);
  plan.options.kv_type = kv;
  plan.kv_fits = std::move(fits);
  estimate_cost(spec, plan);
  plan.warnings.insert(plan.warnings.end(), spec.notes.begin(), spec.notes.end());
  if (hw.gpus.empty())
    plan.warnings.push_back("no GPU: every layer runs on the CPU; decode is bound by host RAM bandwidth");
  if (!o.mtp && spec.config.num_nextn_predict_layers > 0)
    plan.warnings.push_back("MTP layer not loaded (" + core::format_bytes(spec.mtp_bytes()) +
                            "); --mtp loads it for speculative decoding");
  if (!plan.fits) suggest(spec, hw, plan);
  return plan;
}

void check_plan_for_model(const Plan& plan, const ModelSpec& spec) {
  const core::ModelConfig& c = spec.config;
  const int64_t weights = spec.total_bytes - (plan.options.mtp ? 0 : spec.mtp_bytes());
  // Not by name: a checkpoint directory is named by its path, which may change between planning and running.
  FERRY_CHECK(plan.arch == c.arch && plan.weights_bytes == weights,
              "plan: made for {} ({}, {} of weights), the model is {} ({}, {})", plan.model, core::arch_name(plan.arch),
              core::format_bytes(plan.weights_bytes), c.name, core::arch_name(c.arch), core::format_bytes(weights));
  check_homes(plan);
  std::vector<int> want;
  for (int64_t l = 0; l < c.n_layers_total(); ++l)
    if (!c.is_mtp_layer(l) || plan.options.mtp) want.push_back(static_cast<int>(l));
  std::vector<int> have;
  for (const LayerPlan& lp : plan.layers) have.push_back(lp.layer);
  FERRY_CHECK(have == want, "plan: places {} layers, the model has {}{}", have.size(), want.size(),
              plan.options.mtp ? " (with MTP)" : "");
  std::vector<int64_t> held(plan.devices.size(), 0);
  for (const LayerPlan& lp : plan.layers) {
    const auto& w = spec.layers[static_cast<size_t>(lp.layer)];
    const int64_t n = c.is_moe_layer(lp.layer) ? w.n_experts : 0;
    FERRY_CHECK(lp.n_experts() == n, "plan: layer {} homes {} routed experts, the model has {}", lp.layer,
                lp.n_experts(), n);
    for (const ExpertHome& h : lp.experts) held[static_cast<size_t>(h.device)] += h.count * spec.expert_bytes();
  }
  for (size_t i = 0; i < plan.devices.size(); ++i) {
    const DevicePlan& d = plan.devices[i];
    const int64_t planned = d.bytes_of(use_class(core::WeightClass::RoutedExpert).name);
    FERRY_CHECK(planned == held[i], "plan: {} plans {} of routed experts, the experts homed there are {}", d.id,
                core::format_bytes(planned), core::format_bytes(held[i]));
    FERRY_CHECK(!d.over(), "plan: does not fit: {} needs {} but has {}", d.id, core::format_bytes(d.used()),
                core::format_bytes(d.capacity));
    const int64_t cache = d.bytes_of(use_class(Pool::ExpertCache).name);
    FERRY_CHECK(d.prefill_borrowed >= 0 && d.prefill_borrowed <= cache,
                "plan: {}'s prefill borrows {} of its expert cache, which has {}", d.id,
                core::format_bytes(d.prefill_borrowed), core::format_bytes(cache));
  }
  FERRY_CHECK(plan.fits, "plan: does not fit (its \"fits\" is false)");
}

}  // namespace ferry::planner
