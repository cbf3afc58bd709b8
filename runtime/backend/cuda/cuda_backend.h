// The CUDA device `cuda:N` as a Backend: device memory from cudaMalloc, accounted in the ledger like every
// device's; copies from host memory queued with cudaMemcpyAsync on a dedicated non-blocking copy stream, and ops
// launched as CUDA kernels (runtime/kernels/cuda, via cuda_ops.h) on a second non-blocking stream, the compute
// stream. Each copy and each op is followed by an event from its stream's pool, so that `completed` is an event
// query and `wait` polls it against its timeout; an op waits for the copy it needs, and a copy for the op it
// must not overtake, with cudaStreamWaitEvent. No CUDA type appears here: CPU-only code can name the type, and
// make_cuda_backend is what it calls.
// cuda_backend.cpp is built only with CUDA; without it, no_cuda.cpp defines the entry points to say so.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "runtime/backend/backend.h"

namespace ferry::runtime::cuda {

class CudaBackend final : public Backend {
 public:
  // Creates the context on `device` and the copy stream. The ledger's capacity is the device's total memory.
  // Throws ferry::Error naming the device when it does not exist or cannot be used.
  explicit CudaBackend(int device);
  // Releases a paused stream, lets the queued copies land, then destroys the stream and the events; free the
  // backend's buffers first.
  ~CudaBackend() override;

  bool host_addressable() const override { return false; }
  // Device memory of this device, or managed memory (cudaPointerGetAttributes).
  bool holds(const void* p) const override;
  // Pageable `src` is staged by CUDA before the call returns; pinned or registered `src` (pinned_memory.h) is
  // read by the copy engine later, and must stay unchanged until the event has completed.
  CopyEvent copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) override;
  // Page-locks the range with cudaHostRegister (a staging buffer the host allocated); throws ferry::Error with
  // CUDA's message when it cannot.
  std::shared_ptr<void> pin_host(void* p, int64_t bytes) override;
  // The kinds with a CUDA kernel (cuda_ops.h's has_kernel lists them). run() throws ferry::Error naming the device and
  // the op for any other kind, and for arguments its kernel does not take (cuda_ops.h).
  bool supports(ops::Kind kind) const override;
  ComputeEvent run(const ops::Op& op, CopyEvent after = {}, DeviceRange reads = {}) override;
  // Throws ferry::Error naming the device when a copy (an op) on the stream failed.
  bool completed(CopyEvent e) const override;
  void wait(CopyEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;
  bool completed(ComputeEvent e) const override;
  void wait(ComputeEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;
  CopyEvent copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                 ComputeEvent after) override;

  // Reads `bytes` at `offset` of `src` into host memory, after every copy queued before it; returns when they
  // have landed. A pageable `dst` makes CUDA block in the call until the stream reaches the copy (so do not
  // call it with the stream paused); a pinned one is waited for with `timeout`.
  void copy_to_host(void* dst, const DeviceBuffer& src, int64_t offset, int64_t bytes,
                    std::chrono::milliseconds timeout = std::chrono::seconds(60)) override;

  int device() const { return device_; }
  // cudaMemGetInfo now, and its high-water since the backend was created, sampled after every allocation.
  std::optional<MeasuredMemory> measured_memory() const override;

  // Holds the stream before its next copy until resume() (or until a buffer is freed, which waits for the
  // stream as cudaFree does), as SimBackend::pause does: tests use it to observe copies that have not landed.
  // The hold is a host function on the stream that gives up after a minute, so a forgotten resume() cannot
  // hang the process. Copy from pinned memory while the stream is held: CUDA stages a pageable source through
  // a few driver buffers, and once they are full the call blocks until the stream moves.
  void pause();
  void resume();

 protected:
  void* raw_allocate(int64_t bytes) override;
  // Managed memory (cudaMallocManaged): the kernels and the host's code both use a DeviceVector in place, the
  // driver moving its pages where they are used; the forward pass orders their uses with the streams' events.
  void* raw_allocate_shared(int64_t bytes) override;
  // Waits for both streams first (a queued copy may target this memory, a queued op read or write it). When one
  // does not drain within a minute, or failed, the memory is left allocated, with a line on stderr: freeing
  // memory that a copy or a kernel may still write would corrupt the next allocation.
  void raw_free(void* p, int64_t bytes) override;

 private:
  struct Stream;

  // Records the next event of `s`, after everything queued on it so far; returns its sequence number.
  uint64_t record(Stream& s);
  // Whether event `sequence` of `s` has completed; blocks until it has, polling against `timeout`.
  bool landed(Stream& s, uint64_t sequence) const;
  void wait_for(Stream& s, uint64_t sequence, std::chrono::milliseconds timeout) const;
  // Makes `waiter` hold its next work until event `sequence` of `s` has completed (nothing when it has).
  void order_after(Stream& waiter, Stream& s, uint64_t sequence);
  // Resumes the copy stream and waits for everything queued on both streams; for destructors, so it reports on
  // stderr (ending with `otherwise`) instead of throwing, and returns false, when a stream does not drain.
  bool drain(const char* otherwise) noexcept;

  // Samples cudaMemGetInfo into the high-water (after an allocation: memory only grows there).
  void sample_memory();

  int device_;
  int64_t free_at_start_ = 0, total_ = 0;
  std::atomic<int64_t> used_high_water_{0};
  std::unique_ptr<Stream> stream_;   // copies
  std::unique_ptr<Stream> compute_;  // kernels
};

// `cuda:N` for code that holds backends by their interface. Throws ferry::Error naming the device when it is
// unusable, and, in a build without CUDA, saying so.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Bytes a second the device moves in a device-to-device copy of `bytes` (each read and written once: 2·bytes a
// copy), the best of `repetitions`: the memory bandwidth its kernels are measured against. Throws ferry::Error
// naming the device when it cannot be used, and in a build without CUDA.
double device_copy_bandwidth(int device, int64_t bytes, int repetitions);

// The PCI address of CUDA device `device` as /sys/bus/pci/devices names it ("0000:17:00.0"). Throws
// ferry::Error when the device does not exist or the build has no CUDA.
std::string pci_bus_id(int device);

}  // namespace ferry::runtime::cuda
