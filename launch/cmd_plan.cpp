// `ferry plan`: the dry run. Does it fit, where does every tensor go, how fast will it run.
#include <fmt/format.h>
#include <iostream>

#include "launch/commands.h"
#include "launch/hardware_flags.h"
#include "launch/plan_file.h"
#include "launch/plan_flags.h"
#include "launch/rank_setup.h"
#include "planner/calibration.h"
#include "planner/core/file_io.h"
#include "planner/plan_json.h"
#include "planner/report.h"
#include "runtime/backend/worker_threads.h"
#include "transport/world.h"

namespace ferry::launch {
namespace {

class PlanCommand : public Command {
 public:
  explicit PlanCommand(CLI::App& parent) {
    app_ = parent.add_subcommand("plan",
                                 "Plan a model on this machine or a described one, before loading anything: "
                                 "does it fit, where does every tensor go, how fast will it run");
    app_->footer(
        "Examples:\n"
        "  ferry plan -m deepseek-v4-flash --gpu rtx3090 --host-ram 256GiB --ctx 1M\n"
        "  ferry plan -m deepseek-v4-pro --gpu rtx3090 --host-ram 256GiB --nodes 4 --json\n"
        "  ferry plan -m /models/DeepSeek-V4-Flash          (exact bytes from the safetensors headers)\n"
        "  mpirun -np 4 ferry plan -m /models/DeepSeek-V4-Pro   (the 4 ranks' nodes, as each probes its own)\n"
        "Exit status: 0 fits, 3 does not fit (the output says why and what would), 1 bad input, 2 bad flags.");
    plan_flags_.add_to(*app_, true);
    hw_flags_.add_to(*app_);
    app_->add_flag("--json", json_,
                   "Print the plan as JSON (schema ferry.plan v" + std::to_string(planner::Plan::kSchemaVersion) +
                       ", docs/plan-schema.md)");
    app_->add_option("--plan-out", plan_out_, "Also save the plan as JSON to this file (for ferry run --plan)");
    ranks_.add_to(*app_, false);
  }

  CLI::App* app() const override { return app_; }

  int run() override {
    planner::PlanOptions options = plan_flags_.resolve();
    std::vector<std::string> notes;
    planner::Hardware hw = hw_flags_.resolve(notes);
    // Under mpirun: the ranks' nodes, each as its rank saw it (rank 0 prints the plan).
    const transport::World* world = transport::World::current();
    if (world && world->distributed()) {
      plan_for_ranks(*world, ranks_, hw_flags_.nodes.has_value(), hw, notes);
      // The threads each rank would compute with in `ferry run` (ranks on one host share its cores).
      runtime::set_worker_threads(0, world->node_rank(), world->node_size());
      if (!plan_flags_.threads) options.threads = runtime::worker_threads();
    }
    const planner::ModelSpec spec = planner::load_model_spec(plan_flags_.model);
    planner::Plan plan = planner::make_plan(spec, hw, options);
    plan.warnings.insert(plan.warnings.begin(), notes.begin(), notes.end());
    const std::string json = planner::plan_to_json(plan).dump(2) + "\n";
    if (!plan_out_.empty()) core::write_file_atomically(plan_out_, [&](std::ostream& out) { out << json; });
    if (json_)
      std::cout << json;
    else
      std::cout << planner::format_plan(plan, spec) << calibration_line(plan);
    return plan.fits ? kExitOk : kExitDoesNotFit;
  }

 private:
  // The bench's measurement beside this plan's prediction (the same when the plan is for the bench's model).
  std::string calibration_line(const planner::Plan& plan) const {
    if (hw_flags_.calibration.empty()) return "";
    const planner::CalibrationFile f = planner::read_calibration(hw_flags_.calibration);
    const planner::CalibrationRun& m = f.measured;
    return fmt::format(
        "Calibration: {} ({}, {} threads) measured {} at ctx {}: decode {:.2f} tok/s, prefill {:.1f} tok/s "
        "(chunks of {}); this plan predicts decode {:.2f} tok/s, prefill {:.1f} tok/s\n",
        hw_flags_.calibration, f.machine, f.threads, m.model, m.ctx, m.decode_tok_s, m.prefill_tok_s, m.ubatch,
        plan.cost.decode_tok_s, plan.cost.prefill_full_tok_s);
  }

  CLI::App* app_ = nullptr;
  PlanFlags plan_flags_;
  HardwareFlags hw_flags_;
  RankFlags ranks_;
  bool json_ = false;
  std::string plan_out_;
};

}  // namespace

std::unique_ptr<Command> make_plan_command(CLI::App& parent) { return std::make_unique<PlanCommand>(parent); }

}  // namespace ferry::launch
