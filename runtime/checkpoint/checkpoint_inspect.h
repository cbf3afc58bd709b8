// `ferry inspect`: what a checkpoint holds (config, tensor count, bytes by dtype and by class) and whether every
// tensor is what its config implies — present, expected, with the implied shape and dtype.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "planner/model_spec.h"

namespace ferry::runtime {

struct CheckpointReport {
  planner::ModelSpec spec;  // exact bytes from the headers
  std::map<std::string, int64_t> bytes_by_dtype;
  int64_t shards = 0;
  std::vector<std::string> problems;  // one line each: missing, unexpected, wrong shape or dtype
  bool valid() const { return problems.empty(); }
};

// Reads config.json and every header (never the data). Throws a one-line ferry::Error when a file is
// malformed; reports mismatches with the config in `problems`.
CheckpointReport inspect_checkpoint(const std::filesystem::path& dir);

std::string format_report(const CheckpointReport& r);

}  // namespace ferry::runtime
