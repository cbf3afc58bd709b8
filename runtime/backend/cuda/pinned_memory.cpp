#include "runtime/backend/cuda/pinned_memory.h"

#include "planner/core/log.h"

#include <cstdio>
#include <string>

#include "planner/core/units.h"
#include "runtime/backend/cuda/cuda_util.h"

namespace ferry::runtime::cuda {

namespace {

constexpr char kWho[] = "pinned host memory";

// Freeing runs in destructors: a failure is reported, never thrown. A buffer that outlives the CUDA runtime
// (a static, destroyed at exit) was released with the process; that is not worth a line.
void report_release_failure(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();
  if (status != cudaErrorCudartUnloading) core::logger().error("{}: {}: {}", kWho, what, cudaGetErrorString(status));
}

}  // namespace

PinnedBuffer::PinnedBuffer(int64_t bytes, HostCaching caching) : bytes_(bytes) {
  FERRY_CHECK(bytes >= 0, "{}: negative size", kWho);
  if (bytes == 0) return;
  unsigned flags = cudaHostAllocPortable;
  if (caching == HostCaching::WriteCombined) flags |= cudaHostAllocWriteCombined;
  void* p = nullptr;
  check(cudaHostAlloc(&p, static_cast<size_t>(bytes), flags), kWho, "cudaHostAlloc of " + core::format_bytes(bytes));
  data_.reset(p);
}

void PinnedBuffer::FreeHost::operator()(void* p) const { report_release_failure(cudaFreeHost(p), "cudaFreeHost"); }

HostRegistration::HostRegistration(const void* data, int64_t bytes, HostAccess access) : bytes_(bytes) {
  FERRY_CHECK(bytes >= 0, "{}: negative size", kWho);
  FERRY_CHECK(data || bytes == 0, "{}: registering a null pointer", kWho);
  if (bytes == 0) return;
  unsigned flags = cudaHostRegisterPortable;
  if (access == HostAccess::ReadOnly) flags |= cudaHostRegisterReadOnly;
  const std::string what =
      "cudaHostRegister of " + core::format_bytes(bytes) + (access == HostAccess::ReadOnly ? " (read-only)" : "");
  // cudaHostRegister takes a mutable pointer; with ReadOnly the device is never given write access, and
  // without it pinning does not write either.
  check(cudaHostRegister(const_cast<void*>(data), static_cast<size_t>(bytes), flags), kWho, what);
  data_.reset(data);
}

void HostRegistration::Unregister::operator()(const void* p) const {
  report_release_failure(cudaHostUnregister(const_cast<void*>(p)), "cudaHostUnregister");
}

}  // namespace ferry::runtime::cuda
