// The calibration file (`ferry bench decode --calibration-out FILE`, read by `ferry plan --calibration FILE`): the
// rates this machine measured, and the bench's own end-to-end numbers to print beside a plan's prediction.
//   {"schema": "ferry.calibration", "version": 1, "machine": "...", "threads": 2,
//    "rates": {"triad_gbs": .., "host_dense_gbs": .., "host_expert_gbs": .., "host_dense_gflops": ..,
//              "host_expert_gflops": .., "link_gbs": ..},
//    "measured": {"model": "..", "ctx": .., "ubatch": .., "decode_tok_s": .., "prefill_tok_s": ..},
//    "phases_ms": {...}}   (phases_ms: the bench's breakdown, for people; not read)
// Every rate is required and positive but link_gbs (optional, 0: not measured).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "planner/hardware.h"

namespace ferry::planner {

// What the bench measured end to end on its own model, at ctx tokens of context and chunks of ubatch.
struct CalibrationRun {
  std::string model;
  int64_t ctx = 0, ubatch = 0;
  double decode_tok_s = 0, prefill_tok_s = 0;
};

struct CalibrationFile {
  Calibration rates;
  std::string machine;
  int threads = 0;
  CalibrationRun measured;
  nlohmann::json phases_ms = nlohmann::json::object();
};

inline constexpr int kCalibrationVersion = 1;

// Throws ferry::Error with one line naming the file and the problem (unreadable, not JSON, a missing or
// non-positive field).
CalibrationFile read_calibration(const std::filesystem::path& path);
nlohmann::json calibration_to_json(const CalibrationFile& f);

}  // namespace ferry::planner
