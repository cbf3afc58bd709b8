// probe_gpus() for builds with the CUDA toolkit: the CUDA runtime API only, so it compiles as plain C++.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <vector>

#include "planner/core/error.h"
#include "runtime/backend/cuda/cuda_util.h"
#include "runtime/backend/hardware_probe.h"

namespace ferry::runtime {

namespace {

// Peak bandwidth from the memory clock and bus width; 0 when the driver does not report them. CUDA 13 dropped
// cudaDeviceProp::memoryClockRate, the attributes remain.
double peak_bandwidth(int device) {
  int clock_khz = 0;
  int bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  // Double data rate: two transfers per memory clock.
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;
}

}  // namespace

std::vector<planner::GpuSpec> probe_gpus(std::vector<std::string>& notes) {
  int count = 0;
  // Without a driver this is cudaErrorInsufficientDriver, without a device cudaErrorNoDevice: both mean a
  // CPU-only machine, which is a configuration ferry supports, not an error.
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    const std::string why = status != cudaSuccess ? cudaGetErrorString(status) : "no device found";
    notes.push_back("no usable CUDA GPU (" + why + "): planning for the CPU only");
    return {};
  }

  // Probing calls cudaSetDevice on every GPU; the guard puts the thread's current device back so that probing
  // does not decide which GPU later CUDA calls on this thread go to.
  cuda::DeviceGuard guard;
  std::vector<planner::GpuSpec> gpus;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    cudaError_t e = cudaGetDeviceProperties(&prop, i);
    if (e == cudaSuccess) e = cudaSetDevice(i);
    if (e == cudaSuccess) e = cudaMemGetInfo(&free_bytes, &total_bytes);
    // Skipping the device would shift every later GPU's index in the plan away from its CUDA ordinal, so a
    // device that is visible but unusable (busy in exclusive mode, fallen off the bus) stops the probe.
    if (e != cudaSuccess) {
      cudaGetLastError();
      FERRY_THROW(
          "GPU cuda:{} is visible but unusable ({}): hide it with CUDA_VISIBLE_DEVICES or give the GPUs with --gpu", i,
          cudaGetErrorString(e));
    }
    DeviceReport report;
    report.name = prop.name;
    report.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    report.free_bytes = static_cast<int64_t>(free_bytes);
    report.memory_bandwidth = peak_bandwidth(i);
    report.sm = "sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
    gpus.push_back(gpu_spec_from_report(i, report, notes));
  }
  return gpus;
}

}  // namespace ferry::runtime
