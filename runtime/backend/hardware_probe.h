// Probing the machine ferry runs on into the planner's Hardware: host via hwloc, GPUs via the CUDA runtime.
// No hwloc or CUDA type appears here, so the CPU-only build and every caller see the same interface.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "planner/hardware.h"

namespace ferry::runtime {

struct ProbeResult {
  planner::Hardware hardware;
  // Human-readable: what could not be measured and what was assumed instead, e.g. "no CUDA driver: ...".
  std::vector<std::string> notes;
};

// Host and GPUs of this machine, as one node. A machine without GPU or driver gives an empty GPU list and a
// note, never an exception.
ProbeResult probe_hardware();

// RAM, NUMA nodes and physical cores (allowed_physical_cores(), worker_threads.h) from hwloc, counting only what
// this process may use (cgroup cpusets); RAM falls back to the kernel's total where hwloc under-reports it. Memory
// bandwidth and per-core throughput are not measured: the planner defaults are used and a note says so. Throws
// ferry::Error only when hwloc cannot load the topology at all.
planner::HostSpec probe_host(std::vector<std::string>& notes);

// Every visible CUDA device, in CUDA ordinal order. No driver or no device: {} and a note. A device that is
// visible but unusable throws ferry::Error, since leaving it out would shift the later devices' indices.
// Defined in cuda/gpu_probe.cpp, or returns {} with a note in a build without CUDA.
std::vector<planner::GpuSpec> probe_gpus(std::vector<std::string>& notes);

// The gpu_presets() name for a CUDA device name ("NVIDIA GeForce RTX 3090" -> "rtx3090"), matched
// case-insensitively on whole words; nullopt for cards without a preset (and for laptop variants, which share
// a model number with a desktop card but not its chip or speeds).
std::optional<std::string> preset_for_device_name(std::string_view device_name);

// What the CUDA runtime reports about one device.
struct DeviceReport {
  std::string name;             // the device's own name
  int64_t memory_bytes = 0;     // total
  int64_t free_bytes = 0;       // free now, after ferry's own context
  double memory_bandwidth = 0;  // bytes/s from clock and bus width; 0 when the driver did not say
  std::string sm;               // "sm_86"
};

// The GpuSpec for a device: measured values from the report, throughput and PCIe link from the matching preset
// (or conservative defaults, with a note). `index` only labels the notes.
planner::GpuSpec gpu_spec_from_report(int index, const DeviceReport& report, std::vector<std::string>& notes);

}  // namespace ferry::runtime
