#include "runtime/backend/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/host_ops.h"

namespace ferry::runtime::cpu {

namespace {
constexpr size_t kAlign = 64;  // a cache line: the SIMD kernels' loads never split one at a buffer's start
}

void* CpuBackend::raw_allocate(int64_t bytes) {
  const size_t n = (static_cast<size_t>(bytes) + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, n);
  if (!p) FERRY_THROW("{}: out of host memory allocating {}", name(), core::format_bytes(bytes));
  return p;
}

void CpuBackend::raw_free(void* p, int64_t) { std::free(p); }

ComputeEvent CpuBackend::run(const ops::Op& op, CopyEvent after, DeviceRange) {
  wait(after);
  arena_.execute([&op] { run_on_host(op); });
  return {};
}

CopyEvent CpuBackend::copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) {
  check_copy(dst, offset, src, bytes);
  if (bytes > 0) std::memcpy(static_cast<char*>(dst.data()) + offset, src, static_cast<size_t>(bytes));
  return {};
}

}  // namespace ferry::runtime::cpu
