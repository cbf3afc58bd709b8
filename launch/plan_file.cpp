#include "launch/plan_file.h"

#include <filesystem>

#include "planner/core/error.h"
#include "planner/core/file_io.h"
#include "planner/plan_json.h"

namespace ferry::launch {

void write_plan_file(const std::string& path, const planner::Plan& plan) {
  const std::string text = planner::plan_to_json(plan).dump(2) + "\n";
  core::write_file_atomically(path, [&](std::ostream& out) { out << text; });
}

planner::Plan read_plan_file(const std::string& path) {
  FERRY_CHECK(std::filesystem::is_regular_file(path), "cannot read the plan file {}", path);
  return planner::plan_from_json_text(core::read_text_file(path));
}

}  // namespace ferry::launch
