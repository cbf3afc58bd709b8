#include "launch/bench_link.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/hardware.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/pinned_memory.h"
#include "runtime/backend/hardware_probe.h"

namespace ferry::launch {
namespace {

using core::kMiB;

struct Options {
  int device = 0;
  int repetitions = 3;
};

// Each size is copied this many bytes' worth per timing, so that the wait's polling and the first copy's
// setup vanish in the total even at 4 MiB.
constexpr int64_t kBytesPerTiming = 1024 * core::kMiB;

double transfer_rate_gts(planner::PcieGen g) {
  switch (g) {
    case planner::PcieGen::Gen3: return 8;
    case planner::PcieGen::Gen4: return 16;
    case planner::PcieGen::Gen5: return 32;
  }
  return 16;
}

// What 16 lanes carry per direction after 128b/130b encoding, before packet overhead.
double raw_x16_bandwidth(planner::PcieGen g) { return transfer_rate_gts(g) * 1e9 * 128.0 / 130.0 * 16.0 / 8.0; }

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The link as the kernel reports it: it may have trained below the card's generation or width (a x8 slot, a
// riser), which the probe cannot see. The link slows down at idle, so read it after the copies.
std::string kernel_link(int device) {
  const std::string dir = "/sys/bus/pci/devices/" + runtime::cuda::pci_bus_id(device) + "/";
  const std::string speed = first_line(dir + "current_link_speed"), width = first_line(dir + "current_link_width");
  if (speed.empty() || width.empty()) return "not readable from " + dir;
  return speed + " x" + width + " (most: " + first_line(dir + "max_link_speed") + " x" +
         first_line(dir + "max_link_width") + ")";
}

// Seconds for `count` back-to-back copies of `bytes` from `src`, the best of `repetitions`.
double time_copies(runtime::Backend& dev, runtime::DeviceBuffer& dst, const void* src, int64_t bytes, int64_t count,
                   int repetitions) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < repetitions; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::CopyEvent last;
    for (int64_t i = 0; i < count; ++i) last = dev.copy_to_device(dst, 0, src, bytes);
    dev.wait(last);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int run(const Options& o) {
  std::vector<std::string> notes;
  const std::vector<planner::GpuSpec> gpus = runtime::probe_gpus(notes);
  if (gpus.empty()) {
    std::string why = notes.empty() ? "no CUDA GPU found" : notes.front();
    why = why.substr(0, why.rfind(": planning"));  // the probe's note goes on about the plan
    FERRY_THROW("link: {}", why);
  }
  FERRY_CHECK(o.device < static_cast<int>(gpus.size()), "--device {}: this machine has {} GPU(s)", o.device,
              gpus.size());
  const planner::GpuSpec& gpu = gpus[static_cast<size_t>(o.device)];
  const double expected = planner::pcie_h2d_bandwidth(gpu.pcie);
  std::unique_ptr<runtime::Backend> dev = runtime::cuda::make_cuda_backend(o.device);
  std::printf(
      "ferry bench link: %s %s, PCIe %s (the card's): about %.1f GB/s expected from pinned memory, "
      "%.1f GB/s raw at x16\n",
      dev->name().c_str(), gpu.name.c_str(), std::string(planner::pcie_name(gpu.pcie)).c_str(), expected / 1e9,
      raw_x16_bandwidth(gpu.pcie) / 1e9);

  const std::vector<int64_t> sizes = {4 * core::kMiB, 64 * core::kMiB, 256 * core::kMiB};
  const int64_t largest = sizes.back();
  runtime::DeviceBuffer dst = dev->allocate(runtime::MemoryClass::Staging, largest);
  std::vector<char> pageable(static_cast<size_t>(largest), 1);  // written, so every page is resident
  runtime::cuda::PinnedBuffer pinned(largest);
  std::memset(pinned.data(), 1, static_cast<size_t>(largest));
  // The first copies of each kind pay for the driver's staging buffers and the link waking up.
  dev->wait(dev->copy_to_device(dst, 0, pageable.data(), largest));
  dev->wait(dev->copy_to_device(dst, 0, pinned.data(), largest));

  std::printf("%10s %8s %15s %13s %13s\n", "size", "copies", "pageable GB/s", "pinned GB/s", "of expected");
  for (int64_t size : sizes) {
    const int64_t count = std::max<int64_t>(1, kBytesPerTiming / size);
    const double total = static_cast<double>(size * count);
    const double pageable_bw = total / time_copies(*dev, dst, pageable.data(), size, count, o.repetitions);
    const double pinned_bw = total / time_copies(*dev, dst, pinned.data(), size, count, o.repetitions);
    std::printf("%10s %8lld %15.1f %13.1f %12.0f%%\n", core::format_bytes(size).c_str(), static_cast<long long>(count),
                pageable_bw / 1e9, pinned_bw / 1e9, 100 * pinned_bw / expected);
    std::fflush(stdout);
  }
  std::printf("link: %s\n", kernel_link(o.device).c_str());
  return 0;
}

}  // namespace

std::function<int()> add_link_bench(CLI::App& bench, CLI::App*& sub) {
  auto o = std::make_shared<Options>();
  sub = bench.add_subcommand("link",
                             "Host-to-device GB/s of one GPU, pageable against pinned copies of 4, 64 and 256 MiB, "
                             "next to the PCIe link's expected rate");
  sub->add_option("--device", o->device, "CUDA device (default 0)")->check(CLI::Range(0, 1023));
  sub->add_option("--repetitions", o->repetitions, "Timings per size and kind, the best is shown (default 3)")
      ->check(CLI::Range(1, 1000));
  return [o] { return run(*o); };
}

}  // namespace ferry::launch
