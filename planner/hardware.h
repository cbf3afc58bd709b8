// The machine a plan is made for: GPUs, host memory, NUMA, links and nodes.
// Built from flags (presets from ../shared/spec/hardware.md) or probed (runtime/backend/hardware_probe.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::planner {

enum class PcieGen : uint8_t { Gen3, Gen4, Gen5 };
std::string_view pcie_name(PcieGen g);
PcieGen parse_pcie(std::string_view text);  // gen3|gen4|gen5 (also 3, 4, 5)
// Pinned host-to-device bandwidth a x16 link achieves in practice (hardware.md: ~12 / ~25 / 50-55 GB/s).
double pcie_h2d_bandwidth(PcieGen g);

struct GpuSpec {
  std::string name;              // preset name, the probed device name, or "custom"
  int64_t memory_bytes = 0;      // total device memory
  int64_t free_bytes = 0;        // usable now: probed free memory, or memory_bytes for flags
  double memory_bandwidth = 0;   // bytes/s, datasheet
  double bf16_tflops = 0;        // dense BF16/FP16 tensor throughput with FP32 accumulation, datasheet
  PcieGen pcie = PcieGen::Gen4;  // the slot it sits in
  std::string sm;                // e.g. sm_86
  bool probed = false;
};

struct HostSpec {
  int64_t ram_bytes = 0;        // per node
  double memory_bandwidth = 0;  // bytes/s per node, peak (all channels)
  int numa_nodes = 1;           // per node; RAM and bandwidth split evenly
  int cores = 0;                // physical cores per node
  double gflops_per_core = 0;   // sustained expert-kernel throughput per core
  bool probed = false;
};

struct NetworkSpec {
  double bandwidth = 12.5e9;  // bytes/s between nodes (100 GbE)
  double latency_s = 50e-6;   // per collective
};

// Rates measured on this machine by `ferry bench decode --calibration-out` (planner/calibration.h), which the cost
// model takes instead of datasheet peaks times its assumed efficiencies; 0: not measured, the default stands.
struct Calibration {
  std::string source;            // the file read; empty: no calibration
  double triad = 0;              // host bytes/s of a STREAM triad (replaces the host's memory bandwidth)
  double host_dense_bw = 0;      // decode on the CPU: non-routed weights + KV read, bytes/s
  double host_expert_bw = 0;     // decode on the CPU: routed experts, bytes/s
  double host_dense_flops = 0;   // prefill on the CPU: non-routed part and attention, flop/s on all cores
  double host_expert_flops = 0;  // prefill on the CPU: routed experts, flop/s on all cores
  double link_bw = 0;            // host-to-device bytes/s measured (0: none)
};

struct Hardware {
  std::vector<GpuSpec> gpus;  // per node; every node is identical
  HostSpec host;
  int nodes = 1;
  NetworkSpec network;
  int64_t gpu_reserve_bytes = 0;   // per GPU: CUDA context, library handles (not available to ferry)
  int64_t host_reserve_bytes = 0;  // per node: operating system and other processes
  std::string source;              // "flags" or "probed"
  Calibration calibration;         // measured rates; none by default
};

// Presets from ../shared/spec/hardware.md (memory, bandwidth, link) plus the datasheet BF16 tensor throughput.
struct GpuPreset {
  std::string_view name;
  int64_t memory_bytes;
  double memory_bandwidth;
  double bf16_tflops;
  PcieGen pcie;
  std::string_view sm;
};
const std::vector<GpuPreset>& gpu_presets();
// The reference workstation card of hardware.md (an RTX 3090): the speeds assumed for a GPU without a
// datasheet (`--gpu 24GiB`, a probed card no preset matches, a simulated device).
const GpuPreset& reference_gpu();

// "rtx3090" (a preset) or "24GiB" (a custom card with a conservative bandwidth), optionally "rtx4090:20GiB"
// to cap the memory ferry may use. Throws naming the unknown GPU and the known ones.
GpuSpec parse_gpu_spec(std::string_view text);

// Defaults used when a flag is absent (documented in `ferry plan --help`).
constexpr double kDefaultHostBandwidth = 76.8e9;  // 2-channel DDR5-4800, the 256 GB desktop of hardware.md
constexpr int kDefaultHostCores = 16;
constexpr double kDefaultGflopsPerCore = 40;         // AVX2 FP4/FP8 dequant + FMA, sustained, not peak
constexpr int64_t kDefaultGpuReserve = 512LL << 20;  // CUDA context + cuBLAS workspace on a consumer card
constexpr int64_t kDefaultHostReserve = 4LL << 30;   // OS, page tables, other processes

// One line such as "1x rtx3090 (24.00 GiB, 936 GB/s, PCIe gen4), 256.00 GiB RAM @ 76.8 GB/s, 1 NUMA node, 16 cores".
std::string describe(const Hardware& hw);

}  // namespace ferry::planner
