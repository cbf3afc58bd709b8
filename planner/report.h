// The plan as text for a terminal: per-device tables and bars, placement, KV cache, speed, fits per KV type.
#pragma once

#include <string>

#include "planner/plan.h"

namespace ferry::planner {

std::string format_plan(const Plan& plan, const ModelSpec& spec);
// "gpu0 needs 544.91 MiB but has 64.00 MiB: short by 480.91 MiB (largest: ...)": one line, no newline.
std::string shortfall_text(const Shortfall& s);

}  // namespace ferry::planner
