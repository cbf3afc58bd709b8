#include "offload/plan_binding.h"

#include "planner/core/error.h"
#include "runtime/kernels/cpu/linear.h"
#include "runtime/model/op_support.h"
#include "runtime/model/weight_placement.h"

namespace ferry::offload {

using runtime::MemoryClass;

std::array<int64_t, runtime::kMemoryClasses> planned_by_class(const planner::DevicePlan& d) {
  std::array<int64_t, runtime::kMemoryClasses> b{};
  for (const auto& [cls, bytes] : d.use)
    if (cls.ledger) b[static_cast<size_t>(*cls.ledger)] += bytes;
  return b;
}

void set_planned(runtime::MemoryLedger& ledger, const planner::DevicePlan& d) {
  const auto b = planned_by_class(d);
  for (int i = 0; i < runtime::kMemoryClasses; ++i)
    ledger.set_planned(static_cast<MemoryClass>(i), b[static_cast<size_t>(i)]);
}

namespace {

// The plan's devices of `kind`, in plan order.
std::vector<int> devices_of(const planner::Plan& plan, planner::DeviceKind kind) {
  std::vector<int> idx;
  for (size_t i = 0; i < plan.devices.size(); ++i)
    if (plan.devices[i].kind == kind) idx.push_back(static_cast<int>(i));
  return idx;
}

}  // namespace

BoundPlan::BoundPlan(const planner::Plan& plan, const runtime::ModelWeights& checkpoint, runtime::Backend& gpu,
                     runtime::Backend& host, const DispatchOptions& options)
    : BoundPlan(plan, checkpoint, gpu, std::span<runtime::Backend* const>(std::array{&host}), options) {}

std::vector<std::unique_ptr<runtime::cpu::CpuBackend>> make_host_backends(const planner::Plan& plan) {
  std::vector<std::unique_ptr<runtime::cpu::CpuBackend>> hosts;
  const int node = plan.devices.empty() ? 0 : plan.devices.front().node;
  for (const auto& d : plan.devices)
    if (d.kind == planner::DeviceKind::Host && d.node == node)
      hosts.push_back(std::make_unique<runtime::cpu::CpuBackend>(d.id, runtime::MemoryLedger::kUnplanned,
                                                                 runtime::machine_numa_node(d.index)));
  return hosts;
}

BoundPlan::BoundPlan(const planner::Plan& plan, const runtime::ModelWeights& checkpoint, runtime::Backend& gpu,
                     std::span<runtime::Backend* const> hosts, const DispatchOptions& options, HostExperts host_experts)
    : hosts_(hosts.begin(), hosts.end()), weights_(checkpoint), gpu_(&gpu) {
  FERRY_CHECK(plan.fits, "the plan does not fit");
  chunks_ = planned_chunks(plan);
  const std::vector<int> gpus = devices_of(plan, planner::DeviceKind::Gpu);
  const std::vector<int> host_devices = devices_of(plan, planner::DeviceKind::Host);
  FERRY_CHECK(gpus.size() == 1, "ferry runs plans with one GPU for now; this plan has {} ({})", gpus.size(),
              plan.layout);
  FERRY_CHECK(!host_devices.empty(), "the plan has no host");
  FERRY_CHECK(host_devices.size() == hosts_.size(),
              "the plan has {} host memory nodes, the binding was given {} host backends", host_devices.size(),
              hosts_.size());
  // One node's part: the whole plan of one node, or a node's view of a multi-node plan (plan_for_node).
  const int node = planner::view_node(plan);
  const int gpu_index = gpus.front();
  // Every op of the layers the plan runs on the GPU, before a byte is placed.
  std::vector<runtime::ops::Kind> needed;
  for (const auto& lp : plan.layers) {
    const planner::LayerRun* run = planner::run_on_node(plan, lp, node);
    if (run && run->device == gpu_index)
      for (const runtime::ops::Kind k : runtime::ops_of_layer(checkpoint.config(), lp.layer)) needed.push_back(k);
  }
  runtime::require_ops(gpu, needed, "the layers this plan puts on it");
  set_planned(gpu.ledger(), plan.devices[static_cast<size_t>(gpu_index)]);
  for (size_t k = 0; k < hosts_.size(); ++k)
    set_planned(hosts_[k]->ledger(), plan.devices[static_cast<size_t>(host_devices[k])]);

  // The embedding stays in the checkpoint's mapping; it is the first host's weights in the report. The routed
  // experts the plan leaves in RAM are the host expert store's.
  runtime::WeightCopier copier(gpu);
  for (const auto& lp : plan.layers) {
    FERRY_CHECK(!lp.mtp, "binding a plan with the MTP layer is not supported yet (run without --mtp)");
    const planner::LayerRun* run = planner::run_on_node(plan, lp, node);
    if (run && run->device == gpu_index) copier.move_non_routed(weights_.layer_to_place(lp.layer));
  }
  const bool head_on_gpu =
      plan.devices[static_cast<size_t>(gpu_index)].bytes_of(planner::use_class(core::WeightClass::Head).name) > 0;
  if (head_on_gpu) {
    copier.move(weights_.head_to_place());
    copier.move(weights_.norm_to_place());
    copier.move(weights_.hc_head_to_place());
  }
  weight_buffers_ = copier.finish();
  runtime::Backend& host0 = *hosts_.front();
  const std::string embedding = planner::use_class(core::WeightClass::Embedding).name;
  if (plan.devices[static_cast<size_t>(host_devices.front())].bytes_of(embedding) > 0)  // not on a later stage
    mapped_ = runtime::MemoryLedger::Reservation(host0.ledger(), MemoryClass::Weights,
                                                 core::weight_view_bytes(checkpoint.embed()));
  store_ = std::make_unique<HostExpertStore>(plan, weights_, hosts_, host_experts);
  dispatch_ = std::make_unique<ExpertDispatch>(plan, checkpoint, gpu, hosts_, options, store_->host_of_expert());
}

runtime::SessionOptions BoundPlan::session_options(runtime::SessionOptions base) {
  base.device = gpu_;
  base.experts = dispatch_.get();
  if (chunks_.prefill_ubatch > 0) {
    base.ubatch = chunks_.ubatch;
    base.prefill_ubatch = chunks_.prefill_ubatch;
  }
  return base;
}

}  // namespace ferry::offload
