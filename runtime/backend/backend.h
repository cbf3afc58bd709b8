// A backend is a device with memory and an ordered copy stream (../shared/DESIGN.md §3): allocations are
// accounted by class in the device's MemoryLedger and refused beyond the plan; copies from host memory are
// queued on the stream and complete in order, observed through events. Instances: `host` (the CPU's RAM,
// runtime/backend/cpu_backend.h), `sim:SIZE[@BW]` (a budgeted host-backed device that behaves as a GPU of that
// capacity and link bandwidth, runtime/backend/sim_backend.h) and, with CUDA, `cuda:N`.
//
// The forward pass is written against the ops of a backend (ops.h): each op takes buffers of the backend that runs
// it. The host runs them with the CPU kernels (host_ops.h), the simulated device with the same kernels on its own
// compute stream, and `cuda:N` declares what its kernels support.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "runtime/backend/memory_ledger.h"
#include "runtime/backend/ops.h"

namespace ferry::runtime {

class Backend;

// Bytes of one class on one backend, released when destroyed. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  void reset();
  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  MemoryClass memory_class() const { return class_; }
  Backend* backend() const { return backend_; }
  explicit operator bool() const { return backend_ != nullptr; }

 private:
  friend class Backend;
  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  int64_t bytes_ = 0;
  MemoryClass class_ = MemoryClass::Workspace;
};

// The streams of a device: copies into it, compute on it, and (transport/) communication with other ranks. An
// event completes when everything queued on its stream before it has finished; 0 means nothing to wait for.
enum class StreamKind : uint8_t { Copy, Compute, Comm };

template <StreamKind K>
struct [[nodiscard]] Event {
  uint64_t sequence = 0;
};
using CopyEvent = Event<StreamKind::Copy>;
using ComputeEvent = Event<StreamKind::Compute>;
using CommEvent = Event<StreamKind::Comm>;

// A range of device memory an op reads (for the simulated device's overwrite check).
struct DeviceRange {
  const void* data = nullptr;
  int64_t bytes = 0;
};

class Backend {
 public:
  explicit Backend(std::string name, int64_t capacity = MemoryLedger::kUnplanned)
      : ledger_(std::move(name), capacity) {}
  virtual ~Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  const std::string& name() const { return ledger_.device(); }
  // Whether the CPU kernels can read and write this backend's buffers in place.
  virtual bool host_addressable() const = 0;
  // Whether this device's kernels can use the memory at `p`: its own allocations (a GPU cannot dereference the
  // host's heap or a mapped checkpoint); for the host, any memory. The forward pass runs an op on the host instead,
  // or stages its result, where the device does not hold an argument (the embedding table in host RAM, the
  // caller's logits).
  virtual bool holds(const void* p) const = 0;

  MemoryLedger& ledger() { return ledger_; }
  const MemoryLedger& ledger() const { return ledger_; }

  // `bytes` of class `c`, reserved in the ledger first: throws ferry::Error naming the class when that would
  // exceed the plan or the device, before any memory is taken.
  DeviceBuffer allocate(MemoryClass c, int64_t bytes);
  // The same for memory that both the device's kernels and the host's code use in place: the storage of a
  // DeviceVector (runtime/backend/device_vector.h), which holds the workspace, the KV cache and the small weights
  // (a CUDA device gives managed memory). free_host_addressable() takes back exactly what was given.
  void* allocate_host_addressable(MemoryClass c, int64_t bytes);
  void free_host_addressable(MemoryClass c, void* p, int64_t bytes) noexcept;

  // Queues a copy of `bytes` host bytes from `src` into `dst` at `offset`; returns at once. `src` must stay
  // valid, and `dst`'s range must not be read, until the returned event has completed.
  virtual CopyEvent copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) = 0;
  virtual bool completed(CopyEvent e) const = 0;
  // Reads `bytes` at `offset` of `src` into host memory `dst` and returns when they are there, after every copy
  // queued before it (wait for the ops that write `src` first). The default, for host-addressable memory, copies
  // at once.
  virtual void copy_to_host(void* dst, const DeviceBuffer& src, int64_t offset, int64_t bytes,
                            std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Blocks until `e` completes; throws ferry::Error after `timeout` (every wait has one: DESIGN.md §6).
  virtual void wait(CopyEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const = 0;

  // The ops this backend computes (ops.h). A plan whose layers need an op the device lacks is refused when it is
  // bound (model/op_support.h).
  virtual bool supports(ops::Kind kind) const = 0;
  // The compute stream, ordered like a CUDA stream: `op` runs after every op run before it and once the copy
  // `after` has landed; run() returns at once where the device computes beside the host (the simulated device;
  // the host computes in the caller). `reads` names device memory the op reads that a later copy may refill: a
  // copy into it before the op has run is a bug the simulated device counts. An error raised by the op is rethrown
  // by the wait that observes it.
  virtual ComputeEvent run(const ops::Op& op, CopyEvent after = {}, DeviceRange reads = {}) = 0;
  virtual bool completed(ComputeEvent e) const;
  virtual void wait(ComputeEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const;
  // Makes host memory [p, p + bytes) a source this device's copy engine reads directly, until the returned
  // handle is dropped: page-locked (cudaHostRegister) for CUDA, so copies from staging buffers run at the
  // link's speed without the driver's own bounce buffer. The host and the simulated device have nothing to
  // lock; every device counts what is pinned (pinned_bytes). Drop the handle before the backend.
  virtual std::shared_ptr<void> pin_host(void* p, int64_t bytes);
  int64_t pinned_bytes() const { return pinned_bytes_.load(); }

  // The device's own account of its memory (a real GPU: cudaMemGetInfo), for the report next to the plan; none
  // where the ledger is all there is to know (the host, the simulated device).
  virtual std::optional<MeasuredMemory> measured_memory() const { return std::nullopt; }

  // copy_to_device() that lands only after the op `after` has run: refilling a buffer that an op run earlier
  // reads (cudaStreamWaitEvent on the copy stream). The default waits in the caller.
  virtual CopyEvent copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                         ComputeEvent after);

 protected:
  // The handle pin_host() returns: counts `bytes` as pinned until dropped, then drops `lock` (what holds the
  // range locked, if anything).
  std::shared_ptr<void> pinned_handle(int64_t bytes, std::shared_ptr<void> lock);
  virtual void* raw_allocate(int64_t bytes) = 0;
  // For allocate_host_addressable(): raw_allocate() where the device's memory is the host's; a device with
  // memory of its own overrides it (throws otherwise).
  virtual void* raw_allocate_shared(int64_t bytes);
  virtual void raw_free(void* p, int64_t bytes) = 0;
  // Checks that [offset, offset + bytes) lies in `dst` and that `dst` belongs to this backend.
  void check_copy(const DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) const;

 private:
  friend class DeviceBuffer;
  MemoryLedger ledger_;
  std::atomic<int64_t> pinned_bytes_{0};
};

}  // namespace ferry::runtime
