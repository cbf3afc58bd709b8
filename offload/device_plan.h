// The Plan of a run on one GPU-like device next to host RAM (`ferry run --gpu sim:SIZE[@BW]`), made from the
// checkpoint's headers alone, so that a device too small fails before any weight is read; or a saved plan
// (`ferry run --plan FILE`) checked against the checkpoint and the device before any weight is read.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "planner/model_spec.h"
#include "planner/plan.h"
#include "runtime/model/forward.h"

namespace ferry::offload {

struct DeviceRequest {
  std::string name;  // shown in the plan and in errors, e.g. "sim:24.00 GiB@25.0GB/s"
  int64_t capacity = 0;
  double link_bytes_per_s = 0;  // the host link; 0: PCIe gen4's practical rate for the cost model
  int64_t cache_slots = -1;     // GPU expert-cache slots per MoE layer; -1: what room is left
  // A real device's figures (`--gpu cuda:N`, probed: bandwidth, throughput, PCIe link; capacity is its free
  // memory); none: a simulated device, planned with the reference card's speeds.
  std::optional<planner::GpuSpec> gpu;
};

// The machine of such a run: `host` and one GPU-like device (a simulated one: its speeds are the reference card's).
planner::Hardware device_hardware(const planner::HostSpec& host, const DeviceRequest& device);
// `session`'s context, KV type, chunk and MTP choice for `parallel` such sequences (a server's slots), the device's
// cache slots, this process's worker threads. `choose_chunk`: the planner chooses the prefill chunk from
// session.ubatch up (planner::choose_prefill_chunk), as `ferry plan` does without --ubatch.
planner::PlanOptions device_plan_options(const DeviceRequest& device, const runtime::SessionOptions& session,
                                         int64_t parallel = 1, bool choose_chunk = false);
// planner::place with the options' KV type; throws ferry::Error "does not fit on WHERE: <the planner's shortfall
// lines>" when it does not fit.
planner::Plan place_or_explain(const planner::ModelSpec& model, const planner::Hardware& hw,
                               const planner::PlanOptions& options, const std::string& where);

// Plans `session`'s context, KV type, chunk and MTP choice for `parallel` sequences on the device and `host`, the
// forward pass's workspace sized for this process's worker threads. Throws ferry::Error with the planner's
// shortfall lines when it does not fit.
// `choose_chunk`: the prefill chunk is the planner's choice (device_plan_options), not session.ubatch.
planner::Plan plan_for_device(const planner::ModelSpec& model, const planner::HostSpec& host,
                              const DeviceRequest& device, const runtime::SessionOptions& session, int64_t parallel = 1,
                              bool choose_chunk = false);

// Checks that a saved plan runs here: it is `model`'s and fits (planner::check_plan_for_model), has one node
// with one GPU, `device` holds what the plan puts on that GPU, and the plan's workspace has room for this
// process's worker threads. Throws a one-line ferry::Error naming the first problem.
void check_plan_for_device(const planner::Plan& plan, const planner::ModelSpec& model, const DeviceRequest& device);

// A session's chunks under `plan`: ubatch, and the prefill chunk when its prefill borrows the expert cache (the
// session keeps the resident chunk's buffers; 0: it does not borrow).
struct PlannedChunks {
  int64_t ubatch = 0, prefill_ubatch = 0;
};
PlannedChunks planned_chunks(const planner::Plan& plan);

// `base` with the plan's context, KV type, chunks (the resident chunk, and the prefill chunk when it borrows the
// expert cache) and MTP choice.
runtime::SessionOptions planned_session(const planner::Plan& plan, runtime::SessionOptions base);

}  // namespace ferry::offload
