// The planning flags (`--model`, `--ctx`, `--kv-type`, ...) shared by `ferry plan`, `ferry bench plan` and,
// later, `ferry run`. parse_split is `--split` for `ferry run` under mpirun too.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "planner/plan.h"

namespace ferry::launch {

struct PlanFlags {
  std::string model;
  std::string ctx, kv_type, expert_cache, split;
  std::optional<int64_t> ubatch, parallel, snapshots, threads;
  std::optional<double> hit_rate;
  bool mtp = false;

  void add_to(CLI::App& app, bool model_required);
  planner::PlanOptions resolve() const;
};

// The help of `--split` and its value: experts, layers, layers+experts or auto; a one-line error otherwise.
extern const char* const kSplitHelp;
planner::Split parse_split(const std::string& text);

}  // namespace ferry::launch
