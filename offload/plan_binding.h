// Binding a Plan to memory (issue 5, item 1) for a single GPU next to host RAM on one or more NUMA nodes: the
// GPU's layers' non-routed weights and the output head copied to the GPU, routed experts resident there,
// cached there (ExpertDispatch) or held in host RAM by the host expert store (the checkpoint's mapping, or
// copies bound to NUMA nodes), the KV cache and the workspace allocated on the GPU by the Session
// (SessionOptions::device). One host backend per NUMA device of the plan, in plan order; the first takes the
// embedding, the CPU path's buffers and staging, as the planner put them on NUMA node 0. Each device's ledger
// is planned from the Plan's own classes first, so an allocation beyond the plan is refused with the class in
// the message.
#pragma once

#include <array>
#include <memory>
#include <span>
#include <vector>

#include "offload/device_plan.h"
#include "offload/expert_dispatch.h"
#include "offload/host_expert_store.h"
#include "planner/plan.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/model/forward.h"
#include "runtime/model/model_weights.h"

namespace ferry::offload {

// A device's planned bytes by ledger class (each of the Plan's classes carries its own; `reserve`, memory the
// plan leaves to the driver or the OS, is in none).
std::array<int64_t, runtime::kMemoryClasses> planned_by_class(const planner::DevicePlan& d);
void set_planned(runtime::MemoryLedger& ledger, const planner::DevicePlan& d);

// One host backend per host NUMA device of the plan's node (a one-node plan, or a node's view of a multi-node plan:
// planner::plan_for_node), in plan order, named as the plan's device and
// computing on the threads of the machine NUMA node the plan's node is bound to (runtime::machine_numa_node).
std::vector<std::unique_ptr<runtime::cpu::CpuBackend>> make_host_backends(const planner::Plan& plan);

class BoundPlan {
 public:
  // Throws ferry::Error when the plan does not fit, is not one GPU + N host NUMA devices on one node, or
  // `hosts` are not one backend per host device.
  BoundPlan(const planner::Plan& plan, const runtime::ModelWeights& checkpoint, runtime::Backend& gpu,
            std::span<runtime::Backend* const> hosts, const DispatchOptions& options,
            HostExperts host_experts = HostExperts::Mmap);
  // A plan with one host device, its experts left in the mapping.
  BoundPlan(const planner::Plan& plan, const runtime::ModelWeights& checkpoint, runtime::Backend& gpu,
            runtime::Backend& host, const DispatchOptions& options);
  BoundPlan(const BoundPlan&) = delete;
  BoundPlan& operator=(const BoundPlan&) = delete;

  const runtime::ModelWeights& weights() const { return weights_; }
  const ExpertDispatch& dispatch() const { return *dispatch_; }
  const HostExpertStore& host_experts() const { return *store_; }
  // `base` with the device and the expert provider of this binding, and, when the plan's prefill borrows the
  // expert cache, its chunks (the resident chunk's buffers kept, the prefill chunk's borrowed).
  runtime::SessionOptions session_options(runtime::SessionOptions base);

 private:
  std::vector<runtime::Backend*> hosts_;
  runtime::ModelWeights weights_;
  std::vector<runtime::DeviceBuffer> weight_buffers_;
  // The embedding, left in the mapping, counted as the first host's weights; released after the store and the
  // dispatch are gone.
  runtime::MemoryLedger::Reservation mapped_;
  std::unique_ptr<HostExpertStore> store_;  // outlives dispatch_, which reads its experts
  std::unique_ptr<ExpertDispatch> dispatch_;
  runtime::Backend* gpu_;
  PlannedChunks chunks_;  // the plan's
};

}  // namespace ferry::offload
