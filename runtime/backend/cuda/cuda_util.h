// Helpers for the .cpp files of runtime/cuda: the CUDA runtime header is included here, so this header is
// never included from an interface header (DESIGN.md §2).
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "planner/core/error.h"

namespace ferry::runtime::cuda {

// Throws ferry::Error "WHO: WHAT: CUDA's message" unless `status` is cudaSuccess. The error is taken off the
// thread's last-error slot first, so that a later, unrelated check does not report it again.
inline void check(cudaError_t status, const std::string& who, std::string_view what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();
  FERRY_THROW("{}: {}: {}", who, what, cudaGetErrorString(status));
}

// The current device is per thread and decides where cudaMalloc and friends go; a call on one backend must not
// change it for the caller, so the guard puts back the one the thread had.
class DeviceGuard {
 public:
  // Only saves the current device (for code that switches devices itself).
  DeviceGuard() { saved_ = cudaGetDevice(&previous_) == cudaSuccess; }
  // Saves the current device and makes `device` current; throws naming `who` when that fails.
  DeviceGuard(int device, const std::string& who) : DeviceGuard() {
    if (!saved_ || previous_ != device) check(cudaSetDevice(device), who, "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (saved_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool saved_ = false;
};

}  // namespace ferry::runtime::cuda
