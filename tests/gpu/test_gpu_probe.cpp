// Checks probe_gpus() against the CUDA runtime on a machine with GPUs. Exit 77 (skipped) without one.
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/backend/hardware_probe.h"

#ifdef FERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

bool check(bool ok, int index, const char* what) {
  if (!ok) std::fprintf(stderr, "cuda:%d: FAILED: %s\n", index, what);
  return ok;
}

}  // namespace

int main() {
  std::vector<std::string> notes;
  std::vector<ferry::planner::GpuSpec> gpus;
  try {
    gpus = ferry::runtime::probe_gpus(notes);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe_gpus threw: %s\n", e.what());
    return 1;
  }
  for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
  if (gpus.empty()) {
    std::printf("no GPU: skipped\n");
    return 77;
  }

  bool ok = true;
  for (size_t i = 0; i < gpus.size(); ++i) {
    const auto& g = gpus[i];
    const int d = static_cast<int>(i);
    std::printf("cuda:%d %s: %lld bytes, %lld free, %.0f GB/s, %.0f BF16 TFLOPS, PCIe %s, %s\n", d, g.name.c_str(),
                static_cast<long long>(g.memory_bytes), static_cast<long long>(g.free_bytes), g.memory_bandwidth / 1e9,
                g.bf16_tflops, std::string(ferry::planner::pcie_name(g.pcie)).c_str(), g.sm.c_str());
    ok &= check(g.memory_bytes > 0, d, "memory_bytes > 0");
    ok &= check(g.free_bytes > 0 && g.free_bytes <= g.memory_bytes, d, "0 < free_bytes <= memory_bytes");
    ok &= check(g.memory_bandwidth > 1e11, d, "memory_bandwidth > 100 GB/s");
    ok &= check(g.sm.rfind("sm_", 0) == 0, d, "sm starts with sm_");
    ok &= check(g.probed, d, "probed");
#ifdef FERRY_HAVE_CUDA
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    if (!check(cudaSetDevice(d) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess, d,
               "cudaMemGetInfo")) {
      ok = false;
      continue;
    }
    // totalGlobalMem and cudaMemGetInfo's total describe the same memory; allow 1% for drivers that keep a
    // carve-out out of one of them.
    const double diff = static_cast<double>(g.memory_bytes) - static_cast<double>(total_bytes);
    std::printf("cuda:%d cudaMemGetInfo: total %zu, free %zu\n", d, total_bytes, free_bytes);
    ok &= check(diff <= 0.01 * static_cast<double>(total_bytes) && -diff <= 0.01 * static_cast<double>(total_bytes), d,
                "memory_bytes within 1% of cudaMemGetInfo total");
#endif
  }
  std::printf("%s\n", ok ? "gpu probe: OK" : "gpu probe: FAILED");
  return ok ? 0 : 1;
}
