#include "launch/run_offload.h"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "launch/hardware_flags.h"
#include "launch/plan_file.h"
#include "offload/device_plan.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/model_spec.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/model/op_support.h"

namespace ferry::launch {

namespace {

std::string line(const char* fmt, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

std::string bytes(int64_t b) { return core::format_bytes(b); }

// The simulated device's copy and compute streams. Copy time not hidden: the device's compute stream waiting for
// a copy its work reads, and the host waiting for a staging slot.
std::string copy_lines(const runtime::SimBackend& gpu, const offload::DispatchStats& t) {
  const runtime::LinkStats link = gpu.link_stats();
  const runtime::ComputeStats compute = gpu.compute_stats();
  const double waited = compute.copy_wait_seconds + t.copy_wait_seconds;
  const double hidden = link.busy_seconds > 0 ? std::clamp(1 - waited / link.busy_seconds, 0.0, 1.0) : 1.0;
  std::string out = line(
      "copies: %lld experts (%s), copy stream busy %.4f s (link model %.4f s), waited for %.4f s (device "
      "%.4f, host staging %.4f): %.0f%% hidden behind compute\n",
      (long long)t.copies, bytes(t.copy_bytes).c_str(), link.busy_seconds, link.modeled_seconds, waited,
      compute.copy_wait_seconds, t.copy_wait_seconds, 100 * hidden);
  out += line("device compute stream: %lld ops, busy %.4f s; overwrite conflicts %lld\n", (long long)compute.ops_run,
              compute.busy_seconds, (long long)compute.overwrite_conflicts);
  return out;
}

// `--gpu cuda:N`: the probed device N, its free memory the plan's capacity.
offload::DeviceRequest cuda_device_request(const std::string& gpu) {
  const std::optional<int> parsed = cuda_device_index(gpu);
  FERRY_CHECK(parsed.has_value(), "--gpu '{}': a CUDA device is cuda:N, N its index (cuda:0)", gpu);
  const auto index = static_cast<size_t>(*parsed);
  std::vector<std::string> notes;
  const std::vector<planner::GpuSpec> gpus = runtime::probe_gpus(notes);
  if (gpus.empty()) {  // the probe's note says why, for a plan: "…: planning for the CPU only"
    std::string why = notes.empty() ? "no usable CUDA GPU" : notes.front();
    why = why.substr(0, why.rfind(": planning for the CPU only"));
    FERRY_THROW("--gpu {}: {}", gpu, why);
  }
  FERRY_CHECK(index < gpus.size(), "--gpu {}: this machine has {} CUDA GPU(s), cuda:0 to cuda:{}", gpu, gpus.size(),
              gpus.size() - 1);
  offload::DeviceRequest device;
  device.name = fmt::format("--gpu {} ({})", gpu, gpus[index].name);
  device.capacity = gpus[index].free_bytes;
  device.link_bytes_per_s = planner::pcie_h2d_bandwidth(gpus[index].pcie);
  device.gpu = gpus[index];
  return device;
}

}  // namespace

void OffloadFlags::add_to(CLI::App& app) {
  app.add_option("--gpu", gpu,
                 "Run as planned for a GPU: cuda:N, the CUDA device N, planned with its free memory and its "
                 "figures (its kernels cover part of the forward pass so far: a run that needs others stops before "
                 "loading, naming them); or sim:SIZE[@BW], a simulated device of SIZE (e.g. sim:24GiB) with an "
                 "optional host link (sim:24GiB@25GB/s) whose memory is host RAM, computing with the CPU's "
                 "kernels: placement, the expert cache and streaming without a GPU");
  app.add_option("--expert-cache-slots", cache_slots,
                 "GPU expert-cache slots per MoE layer (default: the planner gives the cache what VRAM is left; 0 "
                 "= no cache)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--cache-policy", policy, "GPU expert-cache eviction: lru (default) or lfu")
      ->check(CLI::IsMember({"lru", "lfu"}));
  app.add_option("--stream-min-tokens", stream_min_tokens,
                 "Copy a routed expert to the GPU for a chunk once this many of its tokens use it (prefill "
                 "streaming); 0 = never; default: from the CPU and link bandwidths")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  app.add_option("--host-experts", host_experts,
                 "Where the routed experts the plan leaves in host RAM live (with --gpu): mmap (default), in the "
                 "checkpoint's mapping where the page cache puts them; or numa, copied at load into memory bound "
                 "to the NUMA node the plan homes each expert on (a layer's experts dealt to the NUMA nodes "
                 "round-robin), so that the CPU reads local RAM. Needs RAM for the copies; falls back to "
                 "first-touch memory, with a warning, where the OS refuses binding")
      ->check(CLI::IsMember({"mmap", "numa"}));
  app.add_option("--numa", numa,
                 "NUMA nodes to plan the host RAM for (with --gpu; default: this machine's). A plan for more "
                 "nodes than the machine has runs with plan node k on machine node k % nodes")
      ->check(CLI::Range(1, 64));
  app.add_option("--plan", plan_in,
                 "Run the plan saved in FILE (ferry plan --plan-out, ferry run --plan-out; docs/plan-schema.md), "
                 "perhaps edited, on the --gpu device: it replaces the planning flags (--ctx, --kv-type, --ubatch, "
                 "--numa, --expert-cache-slots); the checkpoint must be the plan's model and the plan must fit");
  app.add_option("--plan-out", plan_out, "Save the plan this run executes as JSON to FILE (with --gpu)");
  app.add_flag("--verbose", verbose, "Print the memory report at load too");
}

void OffloadFlags::check(bool ranks) const {
  if (!plan_in.empty()) {
    FERRY_CHECK(enabled(), "--plan needs --gpu sim:SIZE[@BW], the device that runs the plan's GPU");
    FERRY_CHECK(numa == 0, "--numa: the plan sets the host's NUMA nodes (--plan replaces the planning flags)");
    FERRY_CHECK(cache_slots < 0,
                "--expert-cache-slots: the plan sets the cache slots (--plan replaces the planning flags)");
  }
  if (enabled()) return;
  FERRY_CHECK(host_experts.empty(), "--host-experts needs --gpu (a CPU-only run computes from the mapping)");
  FERRY_CHECK(numa == 0, "--numa needs --gpu (a CPU-only run is not planned)");
  // Under mpirun rank 0 plans even a CPU-only run (the ranks' roles come from the plan).
  FERRY_CHECK(ranks || plan_out.empty(), "--plan-out needs --gpu (a CPU-only run in one process is not planned)");
}

offload::DeviceRequest OffloadFlags::device_request() const {
  if (is_cuda()) {
    offload::DeviceRequest device = cuda_device_request(gpu);
    device.cache_slots = cache_slots;
    return device;
  }
  FERRY_CHECK(gpu.starts_with("sim:"),
              "--gpu '{}': give a CUDA device (cuda:0) or a simulated one (sim:24GiB or sim:24GiB@25GB/s); `ferry "
              "plan --gpu` takes GPU models",
              gpu);
  const runtime::SimDeviceSpec spec = runtime::parse_sim_device(gpu);
  offload::DeviceRequest device;
  device.name = "--gpu " + gpu;
  device.capacity = spec.capacity;
  device.link_bytes_per_s = spec.link_bytes_per_s;
  device.cache_slots = cache_slots;
  return device;
}

OffloadRun::OffloadRun(const OffloadFlags& flags, const std::string& model_dir, const runtime::SessionOptions& so,
                       int64_t parallel, bool choose_chunk)
    : flags_(flags) {
  const offload::DeviceRequest device = flags.device_request();
  const planner::ModelSpec model = planner::load_model_spec(model_dir);
  if (!flags.plan_in.empty()) {
    try {
      plan_ = read_plan_file(flags.plan_in);
      offload::check_plan_for_device(plan_, model, device);
      FERRY_CHECK(plan_.options.parallel >= parallel, "it plans {} sequence(s) at once; --parallel {} needs {}",
                  plan_.options.parallel, parallel, parallel);
      const int64_t keep = so.snapshot_every > 0 ? so.snapshot_keep : 0;
      FERRY_CHECK(plan_.options.snapshot_keep >= keep,
                  "it plans {} prefix-reuse snapshot(s) per sequence; this command keeps {} (plan with `--snapshots "
                  "{}`, or run with --prefix-reuse off)",
                  plan_.options.snapshot_keep, keep, keep);
    } catch (const Error& e) {
      FERRY_THROW("--plan {}: {}", flags.plan_in, e.what());
    }
  } else {
    std::vector<std::string> notes;
    planner::HostSpec host = runtime::probe_host(notes);
    if (flags.numa > 0) host.numa_nodes = flags.numa;
    plan_ = offload::plan_for_device(model, host, device, so, parallel, choose_chunk);
  }
  if (!flags.plan_out.empty()) write_plan_file(flags.plan_out, plan_);
  prepare();
  // Before any weight is read: a device without the kernels this model needs says which.
  runtime::require_ops(*gpu_, runtime::ops_of_model(model.config, so.mtp), "this model's forward pass");
}

OffloadRun::OffloadRun(const OffloadFlags& flags, planner::Plan node_view)
    : flags_(flags), plan_(std::move(node_view)) {
  prepare();
}

void OffloadRun::prepare() {
  double link_bytes_per_s = 0;
  if (flags_.is_cuda()) {
    gpu_ = runtime::cuda::make_cuda_backend(*cuda_device_index(flags_.gpu));  // checked when it was planned
    link_bytes_per_s = planner::pcie_h2d_bandwidth(plan_.hardware.gpus.front().pcie);
  } else {
    const runtime::SimDeviceSpec spec = runtime::parse_sim_device(flags_.gpu);
    gpu_ = std::make_unique<runtime::SimBackend>(spec);
    link_bytes_per_s = spec.link_bytes_per_s;
  }
  if (!flags_.host_experts.empty()) host_experts_ = *offload::host_experts_from_name(flags_.host_experts);
  dispatch_.policy = flags_.policy == "lfu" ? offload::CachePolicy::Lfu : offload::CachePolicy::Lru;
  // The CPU expert kernels reach ~60% of the host's RAM bandwidth (`ferry bench kernels`).
  const double cpu_bw = 0.6 * plan_.hardware.host.memory_bandwidth;
  dispatch_.stream_min_tokens = flags_.stream_min_tokens >= 0
                                    ? flags_.stream_min_tokens
                                    : offload::stream_min_tokens_for(cpu_bw, link_bytes_per_s);
  hosts_ = offload::make_host_backends(plan_);
}

OffloadRun::~OffloadRun() = default;

runtime::SessionOptions OffloadRun::planned_session(runtime::SessionOptions base) const {
  return offload::planned_session(plan_, base);
}

void OffloadRun::bind(const runtime::ModelWeights& checkpoint) {
  std::vector<runtime::Backend*> hosts;
  for (const auto& h : hosts_) hosts.push_back(h.get());
  bound_ = std::make_unique<offload::BoundPlan>(plan_, checkpoint, *gpu_, hosts, dispatch_, host_experts_);
}

std::string OffloadRun::memory_report() const {
  std::string out = line("%-28s %12s %12s %8s\n", "memory by device and class", "planned", "high-water", "of plan");
  std::vector<const runtime::Backend*> devices{gpu_.get()};
  for (const auto& h : hosts_) devices.push_back(h.get());
  for (const runtime::Backend* b : devices) {
    const auto& L = b->ledger();
    int64_t planned = 0;
    for (int i = 0; i < runtime::kMemoryClasses; ++i) planned += L.usage(static_cast<runtime::MemoryClass>(i)).planned;
    const int64_t high = L.total_high_water();
    out += line("  %-26s %12s %12s %7.1f%%\n", b->name().c_str(), bytes(planned).c_str(), bytes(high).c_str(),
                planned ? 100.0 * high / planned : 0.0);
    if (const auto measured = b->measured_memory())
      out += "    " + runtime::measured_memory_line(*measured, planned) + "\n";
    for (int i = 0; i < runtime::kMemoryClasses; ++i) {
      const auto c = static_cast<runtime::MemoryClass>(i);
      const auto u = L.usage(c);
      if (u.planned == 0 && u.high_water == 0) continue;
      // A class another lent to (a prefill chunk's workspace in the expert cache's room) against its most planned.
      out += line("    %-24s %12s %12s %7.1f%%%s\n", std::string(runtime::memory_class_name(c)).c_str(),
                  bytes(u.planned_high).c_str(), bytes(u.high_water).c_str(),
                  u.planned_high ? 100.0 * u.high_water / u.planned_high : 0.0,
                  u.planned_high > u.planned ? "  (borrowed while prefilling)" : "");
    }
  }
  return out;
}

std::string OffloadRun::expert_report() const {
  const offload::DispatchStats t = bound_->dispatch().total();
  const offload::ExpertCache& cache = bound_->dispatch().cache();
  int64_t hits = 0, lookups = 0, evictions = 0;
  for (int l = 0; l < cache.layers(); ++l) {
    const auto s = cache.stats(l);
    hits += s.hits;
    lookups += s.hits + s.misses;
    evictions += s.evictions;
  }
  std::string out =
      line("experts: %lld uses, %.1f%% on the GPU (resident %lld, cache hits %lld, streamed %lld), CPU %lld\n",
           (long long)t.uses(), 100 * t.gpu_share(), (long long)t.resident, (long long)t.cache_hits,
           (long long)t.streamed, (long long)t.cpu);
  out += line(
      "expert cache: %s, hit rate %.1f%% (%lld of %lld lookups), %lld evictions; stream from %lld tokens per expert\n",
      flags_.policy.c_str(), lookups ? 100.0 * hits / lookups : 0.0, (long long)hits, (long long)lookups,
      (long long)evictions, (long long)bound_->dispatch().stream_min_tokens());
  if (const runtime::SimBackend* s = sim())
    out += copy_lines(*s, t);
  else
    out += line("copies: %lld experts (%s)\n", (long long)t.copies, bytes(t.copy_bytes).c_str());
  out += host_experts_line();
  return out;
}

std::string OffloadRun::host_experts_line() const {
  const offload::HostExpertStore& store = bound_->host_experts();
  if (store.mode() == offload::HostExperts::Mmap)
    return line("host experts: mmap, %s in the checkpoint's mapping\n", bytes(store.total_bytes()).c_str());
  std::string out = "host experts: numa";
  for (const auto& r : store.regions())
    out += line(", plan node %d: %s on NUMA node %d (%s)", r.plan_node, bytes(r.bytes).c_str(), r.machine_node,
                r.bound ? "bound" : "first touch");
  return out + "\n";
}

}  // namespace ferry::launch
