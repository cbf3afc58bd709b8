// Checkpoint commands: `ferry make-tiny` writes a random checkpoint in the official V4 layout, `ferry inspect`
// says what a checkpoint holds and whether it matches its config.
#include <iostream>

#include "launch/commands.h"
#include "planner/core/error.h"
#include "runtime/checkpoint/checkpoint_inspect.h"
#include "runtime/checkpoint/tiny_model.h"

namespace ferry::launch {
namespace {

class MakeTinyCommand : public Command {
 public:
  explicit MakeTinyCommand(CLI::App& parent) {
    app_ = parent.add_subcommand(
        "make-tiny", "Write a small random checkpoint in DeepSeek V4's official layout (for tests and demos)");
    app_->add_option("outdir", outdir_, "Directory to write (created if needed)")->required();
    app_->add_option("--seed", options_.seed, "Random seed; the same seed gives byte-identical files (default 0)");
    app_->add_option("--like", like_,
                     "Layer pattern: flash (SWA, CSA, HCA) or pro (compressed from layer 0) (default flash)")
        ->check(CLI::IsMember({"flash", "pro"}));
    app_->add_flag("--real-ratios", options_.real_ratios,
                   "Window 128 and compression ratios 4/128 instead of 16 and 4/16");
    app_->add_option("--shards", options_.shards, "Number of safetensors shards, at least 2 (default 2)");
  }
  CLI::App* app() const override { return app_; }
  int run() override {
    options_.pro_like = like_ == "pro";
    runtime::make_tiny_model(outdir_, options_);
    std::cout << "wrote a tiny " << like_ << "-like checkpoint to " << outdir_ << " (seed " << options_.seed << ")\n";
    return kExitOk;
  }

 private:
  CLI::App* app_ = nullptr;
  std::string outdir_;
  std::string like_ = "flash";
  runtime::TinyOptions options_;
};

class InspectCommand : public Command {
 public:
  explicit InspectCommand(CLI::App& parent) {
    app_ = parent.add_subcommand("inspect",
                                 "What a checkpoint holds, validated against its config.json (reads headers only)");
    app_->add_option("path", path_, "Checkpoint directory (config.json + safetensors shards)")->required();
    app_->footer("Exit status: 0 valid, 1 invalid or unreadable (each problem on its own line on stderr).");
  }
  CLI::App* app() const override { return app_; }
  int run() override {
    const runtime::CheckpointReport r = runtime::inspect_checkpoint(path_);
    std::cout << runtime::format_report(r);
    for (const auto& p : r.problems) std::cerr << "ferry inspect: " << p << "\n";
    return r.valid() ? kExitOk : kExitError;
  }

 private:
  CLI::App* app_ = nullptr;
  std::string path_;
};

}  // namespace

std::unique_ptr<Command> make_make_tiny_command(CLI::App& parent) { return std::make_unique<MakeTinyCommand>(parent); }
std::unique_ptr<Command> make_inspect_command(CLI::App& parent) { return std::make_unique<InspectCommand>(parent); }

}  // namespace ferry::launch
