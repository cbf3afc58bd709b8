// Binding a Plan to memory (issue 5, item 1) for a single GPU next to host RAM: the GPU's layers' non-routed
// weights and the output head copied to the GPU, routed experts resident there, cached there or left in the
// host's mapping of the checkpoint (ExpertDispatch), the KV cache and the workspace allocated on the GPU by
// the Session (SessionOptions::device). Each device's ledger is planned from the Plan's own classes first, so
// an allocation beyond the plan is refused with the class in the message.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "offload/expert_dispatch.h"
#include "planner/plan.h"
#include "runtime/backend.h"
#include "runtime/forward.h"
#include "runtime/model_weights.h"

namespace ferry::offload {

// The ledger class of one of the Plan's classes ("weights.attention" -> Weights, "kv.csa_indexer" -> Indexer,
// "expert_stream" -> ExpertCache, ...); nullopt for "reserve" (memory the plan leaves to the driver / the OS).
std::optional<runtime::MemoryClass> memory_class_of(std::string_view plan_class);
std::array<int64_t, runtime::kMemoryClasses> planned_by_class(const planner::DevicePlan& d);
void set_planned(runtime::MemoryLedger& ledger, const planner::DevicePlan& d);

class BoundPlan {
 public:
  // Throws ferry::Error when the plan does not fit, or is not one GPU + one host on one node.
  BoundPlan(const planner::Plan& plan, const runtime::ModelWeights& checkpoint, runtime::Backend& gpu,
            runtime::Backend& host, const DispatchOptions& options);
  ~BoundPlan();
  BoundPlan(const BoundPlan&) = delete;
  BoundPlan& operator=(const BoundPlan&) = delete;

  const runtime::ModelWeights& weights() const { return weights_; }
  const ExpertDispatch& dispatch() const { return *dispatch_; }
  // `base` with the device and the expert provider of this binding.
  runtime::SessionOptions session_options(runtime::SessionOptions base);

 private:
  runtime::Backend& host_;
  runtime::ModelWeights weights_;
  std::vector<runtime::DeviceBuffer> weight_buffers_;
  std::unique_ptr<ExpertDispatch> dispatch_;
  runtime::Backend* gpu_;
  int64_t mapped_bytes_ = 0;  // host-resident checkpoint tensors, counted as the host's weights
};

}  // namespace ferry::offload
