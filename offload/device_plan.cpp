#include "offload/device_plan.h"

#include <algorithm>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/report.h"
#include "runtime/backend/worker_threads.h"

namespace ferry::offload {

planner::Hardware device_hardware(const planner::HostSpec& host, const DeviceRequest& device) {
  FERRY_CHECK(device.capacity > 0, "device {}: capacity must be positive", device.name);
  planner::Hardware hw;
  hw.host = host;
  hw.host_reserve_bytes = 0;  // measured against this process's own allocations
  planner::GpuSpec g;
  if (device.gpu) {
    g = *device.gpu;  // probed after ferry's own CUDA context: what is free is what the plan may use
    g.free_bytes = device.capacity;
  } else {
    g.name = device.name;
    g.memory_bytes = g.free_bytes = device.capacity;
    // The compute figures only feed the speed estimate; a simulated device computes with the CPU's kernels.
    g.memory_bandwidth = planner::reference_gpu().memory_bandwidth;
    g.bf16_tflops = planner::reference_gpu().bf16_tflops;
  }
  hw.gpus.push_back(g);
  hw.gpu_reserve_bytes = 0;  // a simulated device has no driver context; a real one's is outside its free memory
  hw.source = "flags";
  return hw;
}

planner::PlanOptions device_plan_options(const DeviceRequest& device, const runtime::SessionOptions& session,
                                         int64_t parallel, bool choose_chunk) {
  planner::PlanOptions o;
  o.ctx = session.ctx;
  o.parallel = parallel;
  o.snapshot_keep = session.snapshot_every > 0 ? session.snapshot_keep : 0;
  o.kv_type = session.kv_type;
  o.ubatch = session.ubatch;
  o.choose_ubatch = choose_chunk;
  o.mtp = session.mtp;
  o.threads = runtime::worker_threads();
  if (device.cache_slots >= 0) {
    o.expert_cache = device.cache_slots > 0 ? planner::ExpertCacheMode::Slots : planner::ExpertCacheMode::Off;
    o.expert_cache_slots = device.cache_slots;
  }
  return o;
}

planner::Plan place_or_explain(const planner::ModelSpec& model, const planner::Hardware& hw,
                               const planner::PlanOptions& options, const std::string& where) {
  planner::Plan plan = planner::place(model, hw, options, *options.kv_type);
  if (!plan.fits) {
    std::string why;
    for (const auto& s : plan.shortfalls) why += (why.empty() ? "" : "; ") + planner::shortfall_text(s);
    FERRY_THROW("does not fit on {}: {} (`ferry plan` shows the whole plan)", where, why);
  }
  return plan;
}

planner::Plan plan_for_device(const planner::ModelSpec& model, const planner::HostSpec& host,
                              const DeviceRequest& device, const runtime::SessionOptions& session, int64_t parallel,
                              bool choose_chunk) {
  const planner::Hardware hw = device_hardware(host, device);
  planner::PlanOptions o = device_plan_options(device, session, parallel, choose_chunk);
  if (o.choose_ubatch) o.ubatch = planner::choose_prefill_chunk(model, hw, o, *o.kv_type);
  return place_or_explain(model, hw, o, device.name);
}

void check_plan_for_device(const planner::Plan& plan, const planner::ModelSpec& model, const DeviceRequest& device) {
  planner::check_plan_for_model(plan, model);
  FERRY_CHECK(plan.hardware.nodes == 1, "plan: made for {} nodes; ferry run runs one-node plans for now",
              plan.hardware.nodes);
  const auto gpu = std::find_if(plan.devices.begin(), plan.devices.end(),
                                [](const planner::DevicePlan& d) { return d.kind == planner::DeviceKind::Gpu; });
  FERRY_CHECK(plan.hardware.gpus.size() == 1 && gpu != plan.devices.end(),
              "plan: has {} GPUs; ferry run runs plans with one GPU for now", plan.hardware.gpus.size());
  FERRY_CHECK(gpu->used() <= device.capacity, "does not fit on {}: the plan puts {} on {}, the device has {}",
              device.name, core::format_bytes(gpu->used()), gpu->id, core::format_bytes(device.capacity));
  const int64_t threads = plan.options.threads > 0 ? plan.options.threads : plan.hardware.host.cores;
  const int64_t here = runtime::worker_threads();
  FERRY_CHECK(threads >= here,
              "plan: its workspace is for {} worker threads, this process runs {} (make the plan on this machine)",
              threads, here);
}

PlannedChunks planned_chunks(const planner::Plan& plan) {
  return {plan.resident_chunk(), plan.prefill_borrowed() > 0 ? plan.options.ubatch : 0};
}

runtime::SessionOptions planned_session(const planner::Plan& plan, runtime::SessionOptions base) {
  base.ctx = plan.options.ctx;
  base.kv_type = plan.kv_type;
  const PlannedChunks chunks = planned_chunks(plan);
  base.ubatch = chunks.ubatch;
  base.prefill_ubatch = chunks.prefill_ubatch;
  base.mtp = plan.options.mtp;
  return base;
}

}  // namespace ferry::offload
