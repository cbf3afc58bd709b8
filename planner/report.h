// The plan as text for a terminal: per-device tables and bars, placement, KV cache, speed, fits per KV type.
#pragma once

#include <string>

#include "planner/plan.h"

namespace ferry::planner {

std::string format_plan(const Plan& plan, const ModelSpec& spec);

}  // namespace ferry::planner
