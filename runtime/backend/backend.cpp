#include "runtime/backend/backend.h"

#include <cstring>
#include <utility>

#include "planner/core/error.h"

namespace ferry::runtime {

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    backend_ = std::exchange(o.backend_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    class_ = o.class_;
  }
  return *this;
}

void DeviceBuffer::reset() {
  if (!backend_) return;
  backend_->raw_free(data_, bytes_);
  backend_->ledger_.release(class_, bytes_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

DeviceBuffer Backend::allocate(MemoryClass c, int64_t bytes) {
  MemoryLedger::Reservation reserved(ledger_, c, bytes);
  DeviceBuffer b;
  b.data_ = bytes > 0 ? raw_allocate(bytes) : nullptr;
  reserved.commit();  // the buffer releases it (DeviceBuffer::reset)
  b.backend_ = this;
  b.bytes_ = bytes;
  b.class_ = c;
  return b;
}

void* Backend::raw_allocate_shared(int64_t bytes) {
  FERRY_CHECK(host_addressable(), "{}: the CPU kernels cannot use this device's memory in place", name());
  return raw_allocate(bytes);
}

void* Backend::allocate_host_addressable(MemoryClass c, int64_t bytes) {
  MemoryLedger::Reservation reserved(ledger_, c, bytes);
  void* p = bytes > 0 ? raw_allocate_shared(bytes) : nullptr;
  reserved.commit();  // the caller releases it (free_host_addressable)
  return p;
}

void Backend::free_host_addressable(MemoryClass c, void* p, int64_t bytes) noexcept {
  if (p) raw_free(p, bytes);
  ledger_.release(c, bytes);
}

std::shared_ptr<void> Backend::pin_host(void* p, int64_t bytes) {
  FERRY_CHECK(p || bytes == 0, "{}: pinning a null pointer", name());
  return pinned_handle(bytes, nullptr);
}

std::shared_ptr<void> Backend::pinned_handle(int64_t bytes, std::shared_ptr<void> lock) {
  pinned_bytes_ += bytes;
  return std::shared_ptr<void>(nullptr, [this, bytes, lock = std::move(lock)](void*) mutable {
    lock.reset();
    pinned_bytes_ -= bytes;
  });
}

void Backend::copy_to_host(void* dst, const DeviceBuffer& src, int64_t offset, int64_t bytes,
                           std::chrono::milliseconds) {
  FERRY_CHECK(host_addressable(), "{}: no copy back to the host", name());
  FERRY_CHECK(src.backend() == this, "{}: copy from a buffer of another device", name());
  FERRY_CHECK(offset >= 0 && bytes >= 0 && offset <= src.bytes() && bytes <= src.bytes() - offset,
              "{}: copy of {} bytes at offset {} overruns a buffer of {}", name(), bytes, offset, src.bytes());
  if (bytes > 0) std::memcpy(dst, static_cast<const char*>(src.data()) + offset, static_cast<size_t>(bytes));
}

bool Backend::completed(ComputeEvent) const { return true; }

void Backend::wait(ComputeEvent, std::chrono::milliseconds) const {}

CopyEvent Backend::copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                        ComputeEvent after) {
  wait(after);
  return copy_to_device(dst, offset, src, bytes);
}

void Backend::check_copy(const DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) const {
  FERRY_CHECK(dst.backend() == this, "{}: copy into a buffer of another device", name());
  FERRY_CHECK(offset >= 0 && bytes >= 0 && offset <= dst.bytes() && bytes <= dst.bytes() - offset,
              "{}: copy of {} bytes at offset {} overruns a buffer of {}", name(), bytes, offset, dst.bytes());
  FERRY_CHECK(src || bytes == 0, "{}: copy from a null pointer", name());
}

}  // namespace ferry::runtime
