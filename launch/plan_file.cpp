#include "launch/plan_file.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "planner/core/error.h"
#include "planner/plan_json.h"

namespace ferry::launch {

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) FERRY_THROW("cannot write {}", path);
    out << text;
    out.flush();
    if (!out) FERRY_THROW("cannot write {} (disk full?)", path);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) FERRY_THROW("cannot write {}: {}", path, ec.message());
}

void write_plan_file(const std::string& path, const planner::Plan& plan) {
  write_file_atomically(path, planner::plan_to_json(plan).dump(2) + "\n");
}

planner::Plan read_plan_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FERRY_CHECK(in, "cannot read the plan file {}", path);
  std::stringstream text;
  text << in.rdbuf();
  return planner::plan_from_json_text(text.str());
}

}  // namespace ferry::launch
