// std::vector whose storage comes from a backend, accounted in that device's ledger under one memory class:
// the KV cache, the forward pass's workspace and the small decoded weights live in these, so that what a
// device holds is measured where it is allocated and refused beyond the plan (runtime/backend/memory_ledger.h).
//
// A default-constructed allocator takes plain heap memory without accounting (a CPU-only run, tests); any
// other names a host-addressable backend (the host, or the simulated device) and a class. Vectors keep their
// allocator when copied or moved, so a buffer never silently changes device.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "runtime/backend/backend.h"

namespace ferry::runtime {

template <class T>
class DeviceAllocator {
 public:
  using value_type = T;
  using propagate_on_container_copy_assignment = std::true_type;
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;

  DeviceAllocator() noexcept = default;
  DeviceAllocator(Backend* backend, MemoryClass c) noexcept : backend_(backend), class_(c) {}
  template <class U>
  DeviceAllocator(const DeviceAllocator<U>& o) noexcept : backend_(o.backend()), class_(o.memory_class()) {}

  T* allocate(size_t n) {
    if (!backend_) return std::allocator<T>().allocate(n);
    return static_cast<T*>(backend_->allocate_host_addressable(class_, static_cast<int64_t>(n * sizeof(T))));
  }
  void deallocate(T* p, size_t n) noexcept {
    if (!backend_) return std::allocator<T>().deallocate(p, n);
    backend_->free_host_addressable(class_, p, static_cast<int64_t>(n * sizeof(T)));
  }

  Backend* backend() const noexcept { return backend_; }
  MemoryClass memory_class() const noexcept { return class_; }

  template <class U>
  bool operator==(const DeviceAllocator<U>& o) const noexcept {
    return backend_ == o.backend() && (backend_ == nullptr || class_ == o.memory_class());
  }

 private:
  Backend* backend_ = nullptr;
  MemoryClass class_ = MemoryClass::Workspace;
};

template <class T>
using DeviceVector = std::vector<T, DeviceAllocator<T>>;

// `n` value-initialised elements on `backend` (nullptr: the plain heap) under class `c`.
template <class T>
DeviceVector<T> device_vector(Backend* backend, MemoryClass c, size_t n, const T& value = T()) {
  return DeviceVector<T>(n, value, DeviceAllocator<T>(backend, c));
}

}  // namespace ferry::runtime
