// `ferry bench offload`: decode and prefill speed of expert placements on a synthetic model with V4-Flash's
// MoE shapes (hidden 4096, experts 2048 wide, 6 of them per token, MXFP4), more experts than the simulated
// GPU holds: all experts on the GPU; all in host RAM computed by the CPU; a GPU expert cache of 10% / 25% /
// 50% of each layer's experts; streaming prefill at the link bandwidth.
//
// Each configuration runs for real through the simulated device (offload/): real routing, the real cache and
// policy, real copies on the copy stream, the CPU's expert kernels timed as they run. What a simulated device
// cannot give is a GPU's compute time, so the speed is reported twice: as measured on this machine (where
// "GPU" work runs on the CPU too), and projected for a GPU of --gpu-bandwidth: per layer, the GPU's work
// (non-routed weights and the experts it computes, at its memory bandwidth) and the CPU's measured expert time
// add up (the runtime runs a layer's experts one after another), the copies at the link bandwidth run beside
// them on the copy stream, and the layer takes the longer of the two.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace ferry::launch {

std::function<int()> add_offload_bench(CLI::App& bench, CLI::App*& subcommand);

}  // namespace ferry::launch
