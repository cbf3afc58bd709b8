// Plan files (docs/plan-schema.md): `ferry plan --plan-out` and `ferry run --plan-out` write them, `ferry run
// --plan` reads them back.
#pragma once

#include <string>

#include "planner/plan.h"

namespace ferry::launch {

// Written through a temporary file and a rename (core::write_file_atomically).
void write_plan_file(const std::string& path, const planner::Plan& plan);
// The plan in `path`; throws a one-line ferry::Error when it cannot be read or is not a valid plan.
planner::Plan read_plan_file(const std::string& path);

}  // namespace ferry::launch
