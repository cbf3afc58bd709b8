// `ferry run --gpu sim:SIZE[@BW]`: the run planned for a simulated GPU of that capacity and host link (and
// --numa N host NUMA nodes, this machine's by default) or read from a saved plan (--plan), the Plan bound to memory
// (offload/) with one host backend per NUMA node and the routed experts in RAM mapped or copied to their nodes
// (--host-experts), and the reports at the end: memory per device by class, planned next to the measured high-water
// mark, and where the routed experts were computed.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "offload/device_plan.h"
#include "offload/plan_binding.h"
#include "planner/plan.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/model/forward.h"

namespace ferry::launch {

struct OffloadFlags {
  std::string gpu;           // "cuda:0", "sim:24GiB" or "sim:24GiB@25GB/s"; empty: CPU only
  int64_t cache_slots = -1;  // GPU expert-cache slots per layer; -1: the planner fills the leftover room
  std::string policy = "lru";
  int64_t stream_min_tokens = -1;  // -1: from the cost model (offload::stream_min_tokens_for)
  std::string host_experts;        // "mmap" or "numa"; empty: not given (mmap)
  int numa = 0;                    // NUMA nodes to plan for; 0: this machine's
  std::string plan_in;             // --plan FILE: run this saved plan instead of planning
  std::string plan_out;            // --plan-out FILE: save the plan the run executes
  bool verbose = false;

  void add_to(CLI::App& app);
  bool enabled() const { return !gpu.empty(); }
  bool is_cuda() const { return gpu.starts_with("cuda:"); }
  // The device --gpu names (cuda:N, probed; or sim:…), with --expert-cache-slots; throws naming a device that
  // is neither, a CUDA device this machine lacks, or a machine without CUDA.
  offload::DeviceRequest device_request() const;
  // Throws ferry::Error when a flag that only --gpu uses is given without it (--plan-out is also for runs under
  // mpirun, `ranks`), or a planning flag with --plan.
  void check(bool ranks = false) const;
};

class OffloadRun {
 public:
  // Plans for the simulated device from the checkpoint's headers alone, or reads the --plan file and checks it
  // against them and the device: throws ferry::Error with one line (the planner's shortfall, the plan's
  // mismatch) when it does not fit, before any weight is read. Saves the plan to --plan-out.
  // `parallel`: the sequences the run keeps at once (a server's slots), each with its KV cache on the device.
  // `choose_chunk`: the planner chooses the prefill chunk (no --ubatch given).
  OffloadRun(const OffloadFlags& flags, const std::string& model_dir, const runtime::SessionOptions& session,
             int64_t parallel = 1, bool choose_chunk = false);
  // Runs a node's view of a plan made elsewhere (rank 0 under mpirun: planner::plan_for_node).
  OffloadRun(const OffloadFlags& flags, planner::Plan node_view);
  ~OffloadRun();

  // Places the weights as planned and readies the expert policy.
  void bind(const runtime::ModelWeights& checkpoint);
  const runtime::ModelWeights& weights() const { return bound_->weights(); }
  runtime::SessionOptions session_options(runtime::SessionOptions base) { return bound_->session_options(base); }
  const planner::Plan& plan() const { return plan_; }
  // `base` with the plan's context, KV type, chunk and MTP choice (those of --plan, or `session`'s).
  runtime::SessionOptions planned_session(runtime::SessionOptions base) const;
  const offload::BoundPlan& bound() const { return *bound_; }
  const runtime::Backend& gpu() const { return *gpu_; }
  // The simulated device, or nullptr on a CUDA device (the benches observe a simulated device's events).
  runtime::SimBackend* sim() const { return dynamic_cast<runtime::SimBackend*>(gpu_.get()); }
  // The host backends, one per NUMA device of the plan, in plan order; host() is NUMA node 0's.
  const runtime::cpu::CpuBackend& host() const { return *hosts_.front(); }
  const std::vector<std::unique_ptr<runtime::cpu::CpuBackend>>& hosts() const { return hosts_; }

  // One table: per device and class, planned bytes, the high-water mark and its share of the plan.
  std::string memory_report() const;
  // Where the routed experts ran, the cache's hit rate and the share of copy time hidden behind compute.
  std::string expert_report() const;
  // Where the host's routed experts live: the mapping, or each NUMA node's copies and whether they are bound.
  std::string host_experts_line() const;

 private:
  void prepare();  // the device, the host backends and the expert policy, from plan_ and the flags

  OffloadFlags flags_;
  planner::Plan plan_;
  std::unique_ptr<runtime::Backend> gpu_;
  std::vector<std::unique_ptr<runtime::cpu::CpuBackend>> hosts_;
  std::unique_ptr<offload::BoundPlan> bound_;
  offload::DispatchOptions dispatch_;
  offload::HostExperts host_experts_ = offload::HostExperts::Mmap;
};

}  // namespace ferry::launch
