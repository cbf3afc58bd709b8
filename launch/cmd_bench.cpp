// `ferry bench`: benchmarks, reported with the machine and the numbers (never asserted in tests).
//   ferry bench plan      time of a full `ferry plan` (spec + placement + KV search + suggestions)
//   ferry bench kernels   GB/s of the CPU matvec kernels next to a STREAM-like triad
//   ferry bench decode    time of each part of a decode step and a prefill chunk; --calibration-out for the planner
//   ferry bench context   prefill and decode speed of the CPU forward pass as the context grows
//   ferry bench offload   decode/prefill tok/s of expert placements through the simulated device
//   ferry bench link      host-to-device GB/s of a GPU, pageable against pinned memory
//   ferry bench transport ferry's exchanges between mpirun ranks next to raw MPI, and the calibrated planner
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "launch/bench_context.h"
#include "launch/bench_decode.h"
#include "launch/bench_kernels.h"
#include "launch/bench_kernels_device.h"
#include "launch/bench_link.h"
#include "launch/bench_offload.h"
#include "launch/bench_transport.h"
#include "launch/commands.h"
#include "launch/hardware_flags.h"
#include "launch/plan_flags.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/worker_threads.h"

namespace ferry::launch {
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

class BenchCommand : public Command {
 public:
  explicit BenchCommand(CLI::App& parent) {
    app_ = parent.add_subcommand("bench", "Benchmarks (numbers for notes and regressions; nothing is asserted)");
    app_->require_subcommand(1);
    run_context_ = add_context_bench(*app_, context_);
    run_decode_ = add_decode_bench(*app_, decode_, cpu_model);
    run_link_ = add_link_bench(*app_, link_);
    run_offload_ = add_offload_bench(*app_, offload_);
    run_transport_ = add_transport_bench(*app_, transport_);
    plan_ = app_->add_subcommand("plan",
                                 "Time `ferry plan` end to end (model spec, placement, KV-type search, suggestions)");
    plan_flags_.add_to(*plan_, false);
    hw_flags_.add_to(*plan_);
    plan_->add_option("--iterations", iterations_, "Timed runs (default 20)")->check(CLI::Range(1, 100000));
    kernels_ = app_->add_subcommand(
        "kernels", "GB/s of the MXFP4 expert and FP8 matrix-vector kernels at V4-Flash shapes, next to a triad");
    kernels_->add_option("--repetitions", repetitions_, "Passes over the weights (default 5)")
        ->check(CLI::Range(1, 1000));
    kernels_
        ->add_option("--working-set", working_set_mib_,
                     "MiB of distinct weights cycled through, to defeat the caches (default: 2x the last-level cache, "
                     "at least 256)")
        ->check(CLI::Range(8, 65536));
    kernels_->add_option("--threads", threads_, "Worker threads (default: one per physical core)")
        ->check(CLI::Range(1, 4096));
    kernels_
        ->add_option("--tokens", token_counts_,
                     "Prefill chunk sizes for the multi-token kernels, e.g. 8,64 (default 8,64 on the CPU, 512,4096 "
                     "on a GPU; 0: skip)")
        ->delimiter(',')
        ->check(CLI::Range(0, 65536));
    kernels_->add_option("--device", kernel_device_,
                         "cuda:N: the CUDA kernels of device N (FP8 and MXFP4 linear layers, decode GB/s next to the "
                         "device's copy bandwidth, prefill TFLOP/s next to its BF16 peak; a decode token's indexer and "
                         "attention at 64K and 1M context); default: the CPU's");
  }

  CLI::App* app() const override { return app_; }

  int run() override {
    if (context_->parsed()) {
      std::printf("machine: %s\n", cpu_model().c_str());
      return run_context_();
    }
    if (decode_->parsed()) {
      std::printf("machine: %s\n", cpu_model().c_str());
      return run_decode_();
    }
    if (link_->parsed()) return run_link_();
    if (transport_->parsed()) return run_transport_();
    if (offload_->parsed()) {
      std::printf("machine: %s\n", cpu_model().c_str());
      return run_offload_();
    }
    if (kernels_->parsed()) {
      std::printf("machine: %s\n", cpu_model().c_str());
      const bool on_device = !kernel_device_.empty();
      std::vector<int> given = token_counts_;
      if (kernels_->count("--tokens") == 0) given = on_device ? std::vector<int>{512, 4096} : std::vector<int>{8, 64};
      std::vector<int> counts;
      for (int n : given)
        if (n > 0) counts.push_back(n);
      if (on_device) {
        run_device_kernel_bench(kernel_device_, repetitions_, working_set_mib_, counts);
        return kExitOk;
      }
      FERRY_CHECK(given.empty() || *std::max_element(given.begin(), given.end()) <= 4096,
                  "--tokens: the CPU kernels are measured for chunks of up to 4096 tokens");
      runtime::set_worker_threads(threads_);
      run_kernel_bench(repetitions_, working_set_mib_, counts);
      return kExitOk;
    }
    PlanFlags flags = plan_flags_;
    if (flags.model.empty()) flags.model = "deepseek-v4-pro";
    if (flags.ctx.empty()) flags.ctx = "1M";
    HardwareFlags hw_flags = hw_flags_;
    // Without hardware flags, time the README's workstation rather than this machine's probe.
    if (hw_flags.gpus.empty() && !hw_flags.no_gpu) hw_flags.gpus = {"rtx3090"};
    if (hw_flags.host_ram.empty()) hw_flags.host_ram = "256GiB";
    const planner::PlanOptions options = flags.resolve();
    std::vector<std::string> notes;
    const planner::Hardware hw = hw_flags.resolve(notes);

    std::vector<double> ms;
    bool fits = false;
    for (int i = 0; i < iterations_ + 1; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const planner::ModelSpec spec = planner::load_model_spec(flags.model);
      const planner::Plan plan = planner::make_plan(spec, hw, options);
      const auto t1 = std::chrono::steady_clock::now();
      fits = plan.fits;
      if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());  // first run warms caches
    }
    std::sort(ms.begin(), ms.end());
    std::printf("ferry bench plan: %s, ctx %s, %s (%s)\n", flags.model.c_str(), flags.ctx.c_str(),
                planner::describe(hw).c_str(), fits ? "fits" : "does not fit: includes the search for suggestions");
    std::printf("machine: %s\n", cpu_model().c_str());
    std::printf("iterations %zu: min %.2f ms, median %.2f ms, max %.2f ms\n", ms.size(), ms.front(), ms[ms.size() / 2],
                ms.back());
    return kExitOk;
  }

 private:
  CLI::App* app_ = nullptr;
  CLI::App* plan_ = nullptr;
  PlanFlags plan_flags_;
  HardwareFlags hw_flags_;
  int iterations_ = 20;
  CLI::App* kernels_ = nullptr;
  CLI::App* context_ = nullptr;
  std::function<int()> run_context_;
  CLI::App* decode_ = nullptr;
  std::function<int()> run_decode_;
  CLI::App* link_ = nullptr;
  std::function<int()> run_link_;
  CLI::App* offload_ = nullptr;
  std::function<int()> run_offload_;
  CLI::App* transport_ = nullptr;
  std::function<int()> run_transport_;
  int repetitions_ = 5;
  int threads_ = 0;
  int working_set_mib_ = 0;        // 0: from the cache size
  std::vector<int> token_counts_;  // empty: the defaults of the CPU or the device
  std::string kernel_device_;      // empty: the CPU
};

}  // namespace

std::unique_ptr<Command> make_bench_command(CLI::App& parent) { return std::make_unique<BenchCommand>(parent); }

}  // namespace ferry::launch
