// The hardware flags every planning command shares (`--gpu`, `--host-ram`, ...), and turning them into a
// planner::Hardware: flags where given, this machine's probe for the rest.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "planner/hardware.h"

namespace ferry::launch {

struct HardwareFlags {
  std::vector<std::string> gpus;
  bool no_gpu = false;
  std::string host_ram, host_bw, pcie, gpu_reserve, host_reserve, net_bw;
  std::string calibration;  // a `ferry bench decode --calibration-out` file; empty: none
  std::optional<int> numa, nodes, cores;
  std::optional<double> net_latency_us;

  void add_to(CLI::App& app);
  // Probes only what the flags leave open; `notes` collects what the probe says.
  planner::Hardware resolve(std::vector<std::string>& notes) const;
};

// N for a CUDA device named "cuda:N" (N up to 4 digits), the one spelling --gpu and --device take; nothing
// otherwise.
std::optional<int> cuda_device_index(const std::string& name);

}  // namespace ferry::launch
