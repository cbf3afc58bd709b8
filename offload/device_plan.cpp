#include "offload/device_plan.h"

#include <tbb/task_arena.h>

#include "planner/core/error.h"
#include "planner/report.h"

namespace ferry::offload {

planner::Plan plan_for_device(const planner::ModelSpec& model, const planner::HostSpec& host,
                              const DeviceRequest& device, const runtime::SessionOptions& session) {
  FERRY_CHECK(device.capacity > 0, "device " + device.name + ": capacity must be positive");
  planner::Hardware hw;
  hw.host = host;
  hw.host_reserve_bytes = 0;  // measured against this process's own allocations
  planner::GpuSpec g;
  g.name = device.name;
  g.memory_bytes = g.free_bytes = device.capacity;
  // The compute figures only feed the speed estimate; a simulated device computes with the CPU's kernels.
  g.memory_bandwidth = 936e9;
  g.bf16_tflops = 71;
  hw.gpus.push_back(g);
  hw.gpu_reserve_bytes = 0;  // no driver context on a simulated device
  hw.source = "flags";

  planner::PlanOptions o;
  o.ctx = session.ctx;
  o.kv_type = session.kv_type;
  o.ubatch = session.ubatch;
  o.mtp = session.mtp;
  o.threads = tbb::this_task_arena::max_concurrency();
  if (device.cache_slots >= 0) {
    o.expert_cache = device.cache_slots > 0 ? planner::ExpertCacheMode::Slots : planner::ExpertCacheMode::Off;
    o.expert_cache_slots = device.cache_slots;
  }
  planner::Plan plan = planner::place(model, hw, o, session.kv_type);
  if (!plan.fits) {
    std::string why;
    for (const auto& s : plan.shortfalls) why += (why.empty() ? "" : "; ") + planner::shortfall_text(s);
    FERRY_THROW("does not fit on " + device.name + ": " + why + " (`ferry plan` shows the whole plan)");
  }
  return plan;
}

}  // namespace ferry::offload
