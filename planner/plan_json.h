// The Plan as JSON (schema "ferry.plan", version Plan::kSchemaVersion; docs/plan-schema.md). `ferry plan
// --json` prints it, `--plan-out` saves it, and `ferry run --plan FILE` reads it back.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "planner/plan.h"

namespace ferry::planner {

nlohmann::ordered_json plan_to_json(const Plan& plan);
// Throws a one-line ferry::Error on a wrong schema, version or field type.
Plan plan_from_json(const nlohmann::ordered_json& j);
Plan plan_from_json_text(std::string_view text);

}  // namespace ferry::planner
