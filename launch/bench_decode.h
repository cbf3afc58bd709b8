// `ferry bench decode`: one decode step and one prefill chunk of a synthetic model with V4-Flash's real shapes (a
// CSA and an HCA layer, fewer experts) over a KV cache filled to --ctx, with the time of each part of the forward
// pass; --calibration-out writes the rates they imply (planner/calibration.h) and the planner's prediction from
// them is printed beside the measurement.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace ferry::launch {

// `machine` names the CPU, for the calibration file.
std::function<int()> add_decode_bench(CLI::App& bench, CLI::App*& sub, std::function<std::string()> machine);

}  // namespace ferry::launch
