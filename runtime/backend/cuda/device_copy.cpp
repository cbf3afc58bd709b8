// device_copy_bandwidth(): the memory bandwidth a kernel can hope for on this device, measured as the driver's
// device-to-device copy (a read and a write of every byte), which the decode kernels' GB/s are reported against.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>

#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/cuda_util.h"

namespace ferry::runtime::cuda {

namespace {

// Two buffers and two events, released on every path out of the measurement.
struct CopyScratch {
  void* a = nullptr;
  void* b = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  ~CopyScratch() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (a) cudaFree(a);
    if (b) cudaFree(b);
  }
};

}  // namespace

double device_copy_bandwidth(int device, int64_t bytes, int repetitions) {
  const std::string who = "cuda:" + std::to_string(device);
  FERRY_CHECK(bytes > 0 && repetitions > 0, "{}: copy bandwidth of {} bytes, {} times", who, bytes, repetitions);
  DeviceGuard guard(device, who);
  CopyScratch s;
  check(cudaMalloc(&s.a, static_cast<size_t>(bytes)), who, "cudaMalloc for the copy bandwidth");
  check(cudaMalloc(&s.b, static_cast<size_t>(bytes)), who, "cudaMalloc for the copy bandwidth");
  check(cudaMemset(s.a, 1, static_cast<size_t>(bytes)), who, "cudaMemset");
  check(cudaEventCreate(&s.start), who, "cudaEventCreate");
  check(cudaEventCreate(&s.stop), who, "cudaEventCreate");
  float best_ms = 0;
  for (int r = 0; r <= repetitions; ++r) {  // the first pass warms the clocks and is not counted
    check(cudaEventRecord(s.start), who, "cudaEventRecord");
    check(cudaMemcpyAsync(s.b, s.a, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice), who, "cudaMemcpyAsync");
    check(cudaEventRecord(s.stop), who, "cudaEventRecord");
    check(cudaEventSynchronize(s.stop), who, "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, s.start, s.stop), who, "cudaEventElapsedTime");
    if (r > 0) best_ms = best_ms == 0 ? ms : std::min(best_ms, ms);
  }
  return 2.0 * static_cast<double>(bytes) / (static_cast<double>(best_ms) * 1e-3);
}

}  // namespace ferry::runtime::cuda
