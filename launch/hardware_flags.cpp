#include "launch/hardware_flags.h"

#include "planner/calibration.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/hardware_probe.h"

namespace ferry::launch {

void HardwareFlags::add_to(CLI::App& app) {
  std::string known;
  for (const auto& p : planner::gpu_presets()) known += (known.empty() ? "" : ", ") + std::string(p.name);
  app.add_option("--gpu", gpus,
                 "A GPU per node, repeatable: a preset (" + known +
                     ") or a size such as 24GiB; "
                     "NAME:SIZE caps what ferry may use. Default: the GPUs of this machine")
      ->group("Hardware (default: probe this machine)");
  app.add_flag("--no-gpu", no_gpu, "Plan for the CPU only")->group("Hardware (default: probe this machine)");
  app.add_option("--host-ram", host_ram, "Host RAM per node, e.g. 256GiB (default: this machine's)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--host-bw", host_bw,
                 "Peak host memory bandwidth per node in GB/s (default 76.8: 2-channel DDR5-4800)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--pcie", pcie, "PCIe generation of the GPU slots: gen3, gen4, gen5 (default: the GPU preset's)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--numa", numa, "NUMA nodes per node (RAM and bandwidth split evenly)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--cores", cores, "Physical CPU cores per node")->group("Hardware (default: probe this machine)");
  app.add_option("--nodes", nodes,
                 "Identical nodes (mpirun ranks, one per node); routed experts are sharded across them")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--net-bw", net_bw,
                 "Bandwidth between nodes in GB/s (default 12.5: 100 GbE; `ferry bench transport` measures it)")
      ->group("Hardware (default: probe this machine)");
  app.add_option(
         "--net-latency-us", net_latency_us,
         "Latency of one exchange between nodes in microseconds (default 50; `ferry bench transport` measures it)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--gpu-reserve", gpu_reserve,
                 "Memory per GPU kept for the CUDA context and libraries (default 512MiB)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--calibration", calibration,
                 "Rates measured on this machine by `ferry bench decode --calibration-out FILE`, used instead of "
                 "the defaults for the host (and the link, where measured)")
      ->group("Hardware (default: probe this machine)");
  app.add_option("--host-reserve", host_reserve, "RAM per node kept for the OS and other processes (default 4GiB)")
      ->group("Hardware (default: probe this machine)");
}

planner::Hardware HardwareFlags::resolve(std::vector<std::string>& notes) const {
  using namespace planner;
  Hardware hw;
  const bool host_given = !host_ram.empty();
  const bool gpus_given = !gpus.empty() || no_gpu;
  if (!gpus.empty() && no_gpu) FERRY_THROW("--gpu and --no-gpu contradict each other");

  if (host_given) {
    hw.host.ram_bytes = core::parse_size(host_ram, "--host-ram");
    hw.host.memory_bandwidth = kDefaultHostBandwidth;
    hw.host.numa_nodes = 1;
    hw.host.cores = kDefaultHostCores;
    hw.host.gflops_per_core = kDefaultGflopsPerCore;
  } else {
    hw.host = runtime::probe_host(notes);
  }
  if (!host_bw.empty()) hw.host.memory_bandwidth = core::parse_bandwidth(host_bw, "--host-bw");
  if (numa) {
    if (*numa < 1 || *numa > 64) FERRY_THROW("--numa must be in [1, 64], got {}", *numa);
    hw.host.numa_nodes = *numa;
  }
  if (cores) {
    if (*cores < 1 || *cores > 4096) FERRY_THROW("--cores must be in [1, 4096], got {}", *cores);
    hw.host.cores = *cores;
  }

  if (gpus_given) {
    for (const auto& g : gpus) hw.gpus.push_back(parse_gpu_spec(g));
  } else {
    hw.gpus = runtime::probe_gpus(notes);
  }
  if (!pcie.empty()) {
    const PcieGen gen = parse_pcie(pcie);
    for (auto& g : hw.gpus) g.pcie = gen;
  }
  if (nodes) {
    if (*nodes < 1 || *nodes > 1024) FERRY_THROW("--nodes must be in [1, 1024], got {}", *nodes);
    hw.nodes = *nodes;
  }
  if (!net_bw.empty()) hw.network.bandwidth = core::parse_bandwidth(net_bw, "--net-bw");
  if (net_latency_us) {
    if (!(*net_latency_us >= 0) || *net_latency_us > 1e6) FERRY_THROW("--net-latency-us must be in [0, 1000000]");
    hw.network.latency_s = *net_latency_us * 1e-6;
  }
  // 0 is a size here (no reserve: what the ranks under mpirun plan with, see launch/rank_setup.cpp).
  auto reserve = [](const std::string& text, int64_t fallback, const char* flag) -> int64_t {
    return text.empty() ? fallback : text == "0" ? 0 : core::parse_size(text, flag);
  };
  hw.gpu_reserve_bytes = reserve(gpu_reserve, kDefaultGpuReserve, "--gpu-reserve");
  hw.host_reserve_bytes = reserve(host_reserve, kDefaultHostReserve, "--host-reserve");
  if (!calibration.empty()) {
    hw.calibration = read_calibration(calibration).rates;
    notes.push_back("host rates measured by ferry bench decode (" + calibration + ")");
  }
  hw.source = host_given && gpus_given ? "flags" : (!host_given && !gpus_given ? "probed" : "flags + probed");
  return hw;
}

std::optional<int> cuda_device_index(const std::string& name) {
  const std::string prefix = "cuda:";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size());
  if (digits.empty() || digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  return std::stoi(digits);
}

}  // namespace ferry::launch
