// The planning flags (`--model`, `--ctx`, `--kv-type`, ...) shared by `ferry plan`, `ferry bench plan` and,
// later, `ferry run`.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "planner/plan.h"

namespace ferry::launch {

struct PlanFlags {
  std::string model;
  std::string ctx, kv_type, expert_cache;
  std::optional<int64_t> ubatch, parallel;
  std::optional<double> hit_rate;
  bool mtp = false;

  void add_to(CLI::App& app, bool model_required);
  planner::PlanOptions resolve() const;
};

}  // namespace ferry::launch
