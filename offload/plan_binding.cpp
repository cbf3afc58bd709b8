#include "offload/plan_binding.h"

#include "planner/error.h"
#include "runtime/cpu/linear.h"
#include "runtime/weight_placement.h"

namespace ferry::offload {

using runtime::MemoryClass;

std::optional<MemoryClass> memory_class_of(std::string_view c) {
  if (c == "reserve") return std::nullopt;
  if (c.starts_with("weights.")) return MemoryClass::Weights;
  if (c == "kv.csa_indexer" || c == "kv.mla_indexer") return MemoryClass::Indexer;
  if (c.starts_with("kv.")) return MemoryClass::Kv;
  if (c == "workspace") return MemoryClass::Workspace;
  if (c == "expert_cache" || c == "expert_stream") return MemoryClass::ExpertCache;
  if (c == "staging") return MemoryClass::Staging;
  FERRY_THROW("plan: unknown memory class '" + std::string(c) + "'");
}

std::array<int64_t, runtime::kMemoryClasses> planned_by_class(const planner::DevicePlan& d) {
  std::array<int64_t, runtime::kMemoryClasses> b{};
  for (const auto& [cls, bytes] : d.use)
    if (const auto m = memory_class_of(cls)) b[static_cast<size_t>(*m)] += bytes;
  return b;
}

void set_planned(runtime::MemoryLedger& ledger, const planner::DevicePlan& d) {
  const auto b = planned_by_class(d);
  for (int i = 0; i < runtime::kMemoryClasses; ++i) ledger.set_planned(static_cast<MemoryClass>(i), b[static_cast<size_t>(i)]);
}

namespace {

const planner::DevicePlan& only(const planner::Plan& plan, planner::DeviceKind kind, int& index) {
  index = -1;
  for (size_t i = 0; i < plan.devices.size(); ++i) {
    if (plan.devices[i].kind != kind) continue;
    FERRY_CHECK(index < 0, "ferry runs plans with one GPU and one host memory node for now; this plan has more (" +
                               plan.layout + ")");
    index = static_cast<int>(i);
  }
  FERRY_CHECK(index >= 0, std::string("the plan has no ") + (kind == planner::DeviceKind::Gpu ? "GPU" : "host"));
  return plan.devices[static_cast<size_t>(index)];
}

}  // namespace

BoundPlan::BoundPlan(const planner::Plan& plan, const runtime::ModelWeights& checkpoint, runtime::Backend& gpu,
                     runtime::Backend& host, const DispatchOptions& options)
    : host_(host), weights_(checkpoint), gpu_(&gpu) {
  FERRY_CHECK(plan.fits, "the plan does not fit");
  int gpu_index = -1, host_index = -1;
  set_planned(gpu.ledger(), only(plan, planner::DeviceKind::Gpu, gpu_index));
  set_planned(host.ledger(), only(plan, planner::DeviceKind::Host, host_index));

  // Host-resident tensors stay in the checkpoint's mapping: the embedding and the routed experts of layers
  // whose experts the plan leaves in RAM. They are the host's weights in the report.
  mapped_bytes_ = runtime::cpu::weight_view_bytes(checkpoint.embed());
  runtime::WeightCopier copier(gpu);
  for (const auto& lp : plan.layers) {
    FERRY_CHECK(!lp.mtp, "binding a plan with the MTP layer is not supported yet (run without --mtp)");
    runtime::LayerWeights& L = weights_.layer_to_place(lp.layer);
    if (lp.device == gpu_index) copier.move_non_routed(L);
    if (lp.experts_in_ram > 0)
      for (const auto& e : L.experts) mapped_bytes_ += runtime::expert_bytes(e);
  }
  const bool head_on_gpu = plan.devices[static_cast<size_t>(gpu_index)].bytes_of("weights.head") > 0;
  if (head_on_gpu) {
    copier.move(weights_.head_to_place());
    copier.move(weights_.norm_to_place());
    copier.move(weights_.hc_head_to_place());
  }
  weight_buffers_ = copier.finish();
  host.ledger().reserve(MemoryClass::Weights, mapped_bytes_);
  try {
    dispatch_ = std::make_unique<ExpertDispatch>(plan, checkpoint, gpu, host, options);
  } catch (...) {
    host.ledger().release(MemoryClass::Weights, mapped_bytes_);
    throw;
  }
}

BoundPlan::~BoundPlan() {
  dispatch_.reset();
  host_.ledger().release(MemoryClass::Weights, mapped_bytes_);
}

runtime::SessionOptions BoundPlan::session_options(runtime::SessionOptions base) {
  base.device = gpu_;
  base.experts = dispatch_.get();
  return base;
}

}  // namespace ferry::offload
