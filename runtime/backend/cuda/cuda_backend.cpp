#include "runtime/backend/cuda/cuda_backend.h"

#include "planner/core/log.h"

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "planner/core/units.h"
#include "runtime/backend/cuda/cuda_ops.h"
#include "runtime/backend/cuda/cuda_util.h"
#include "runtime/backend/cuda/pinned_memory.h"

namespace ferry::runtime::cuda {

namespace {

// How long freeing and destruction wait for the stream, and how long pause() may hold it at most.
constexpr auto kDrainTimeout = std::chrono::seconds(60);
constexpr auto kLongestHold = std::chrono::seconds(60);

std::string device_name(int device) { return "cuda:" + std::to_string(device); }

// The device's total memory, checking on the way that it exists and takes a context: the constructor's
// errors then name the device rather than a later call.
int64_t device_memory(int device) {
  const std::string who = device_name(device);
  int count = 0;
  check(cudaGetDeviceCount(&count), who, "no usable CUDA device");
  FERRY_CHECK(device >= 0 && device < count, "{}: no such device ({} visible)", who, count);
  DeviceGuard guard(device, who);
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), who, "cudaMemGetInfo");
  return static_cast<int64_t>(total_bytes);
}

// What pause() holds the stream on: a host function on the stream that returns once the gate is open.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = true;

  static void CUDART_CB hold(void* gate) {
    auto* g = static_cast<Gate*>(gate);
    std::unique_lock<std::mutex> lock(g->mu);
    g->cv.wait_for(lock, kLongestHold, [g] { return g->open; });
  }
};

}  // namespace

// A stream and its events: the copy stream or the compute stream. Each copy (op) is followed by an event with
// the next sequence number; the stream runs in order, so events complete in sequence order and `landed` (all
// events up to it completed) is all `completed` needs. Completed events go back to a pool: a copy or an op costs
// no cudaEventCreate once warm.
struct CudaBackend::Stream {
  std::string who;
  const char* failed = "";  // what the error of a failed event says
  cudaStream_t stream = nullptr;
  std::mutex mu;
  uint64_t queued = 0;
  uint64_t landed = 0;
  std::deque<std::pair<uint64_t, cudaEvent_t>> pending;  // recorded, not yet seen complete, oldest first
  std::vector<cudaEvent_t> idle;
  Gate gate;

  Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  // Destroying an event or a stream with work outstanding is allowed: CUDA releases them once it is done.
  ~Stream() {
    for (auto& p : pending) cudaEventDestroy(p.second);
    for (cudaEvent_t e : idle) cudaEventDestroy(e);
    if (stream) cudaStreamDestroy(stream);
    cudaGetLastError();
  }

  // Moves the completed events from `pending` to the pool, oldest first; the first one not ready ends the
  // scan. Throws when the stream reports a failed copy. Holds `mu`.
  void reap() {
    while (!pending.empty()) {
      const cudaError_t status = cudaEventQuery(pending.front().second);
      if (status == cudaErrorNotReady) {
        cudaGetLastError();  // "not ready" is an answer, not an error a later check should see
        return;
      }
      check(status, who, failed);
      landed = pending.front().first;
      idle.push_back(pending.front().second);
      pending.pop_front();
    }
  }
};

CudaBackend::CudaBackend(int device)
    : Backend(device_name(device), device_memory(device)),
      device_(device),
      stream_(std::make_unique<Stream>()),
      compute_(std::make_unique<Stream>()) {
  stream_->who = compute_->who = name();
  stream_->failed = "a copy on the stream failed";
  compute_->failed = "an op on the compute stream failed";
  DeviceGuard guard(device_, name());
  // The host reads and writes the forward pass's managed buffers (raw_allocate_shared) while kernels run on
  // others: that needs concurrent managed access (Linux, sm_60 and later), without which it would fault.
  int concurrent = 0;
  check(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device_), name(),
        "cudaDeviceGetAttribute");
  FERRY_CHECK(concurrent == 1,
              "{}: the device lacks concurrent managed memory access, which ferry needs (Linux, "
              "sm_60 or later)",
              name());
  // Non-blocking: neither stream may serialise with work on the legacy default stream.
  check(cudaStreamCreateWithFlags(&stream_->stream, cudaStreamNonBlocking), name(), "cudaStreamCreateWithFlags");
  check(cudaStreamCreateWithFlags(&compute_->stream, cudaStreamNonBlocking), name(), "cudaStreamCreateWithFlags");
  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), name(), "cudaMemGetInfo");
  free_at_start_ = static_cast<int64_t>(free_bytes), total_ = static_cast<int64_t>(total_bytes);
}

void CudaBackend::sample_memory() {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();  // a report's figure, not worth failing an allocation that succeeded
    return;
  }
  const int64_t used = free_at_start_ - static_cast<int64_t>(free_bytes);
  int64_t high = used_high_water_.load();
  while (used > high && !used_high_water_.compare_exchange_weak(high, used)) {
  }
}

std::optional<MeasuredMemory> CudaBackend::measured_memory() const {
  DeviceGuard guard(device_, name());
  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes), name(), "cudaMemGetInfo");
  return MeasuredMemory{total_, free_at_start_, static_cast<int64_t>(free_bytes), used_high_water_.load()};
}

CudaBackend::~CudaBackend() {
  // A host function of pause() holds a pointer to the gate: if the stream did not drain, its state is left to
  // the process rather than freed under it.
  if (!drain("leaving the streams to the process")) {
    static_cast<void>(stream_.release());
    static_cast<void>(compute_.release());
  }
  DeviceGuard guard;
  cudaSetDevice(device_);
  stream_.reset();
  compute_.reset();
}

// The events recorded here come after everything on the streams, pause()'s host functions included.
bool CudaBackend::drain(const char* otherwise) noexcept {
  resume();
  try {
    DeviceGuard guard(device_, name());
    wait_for(*compute_, record(*compute_), kDrainTimeout);
    wait_for(*stream_, record(*stream_), kDrainTimeout);
    return true;
  } catch (const std::exception& e) {
    core::logger().error("{}; {}", e.what(), otherwise);
    return false;
  }
}

void* CudaBackend::raw_allocate(int64_t bytes) {
  DeviceGuard guard(device_, name());
  void* p = nullptr;
  check(cudaMalloc(&p, static_cast<size_t>(bytes)), name(), "cudaMalloc of " + core::format_bytes(bytes));
  sample_memory();
  return p;
}

void* CudaBackend::raw_allocate_shared(int64_t bytes) {
  DeviceGuard guard(device_, name());
  void* p = nullptr;
  check(cudaMallocManaged(&p, static_cast<size_t>(bytes)), name(), "cudaMallocManaged of " + core::format_bytes(bytes));
  // The kernels use these buffers on every step, the host now and then (routing, its experts' rows, snapshots):
  // their pages live on the device and the host's accesses map them rather than pull them over. Advice only: a
  // device or driver that declines it still runs correctly.
  cudaMemLocation here{};
  here.type = cudaMemLocationTypeDevice, here.id = device_;
  cudaMemLocation host{};
  host.type = cudaMemLocationTypeHost;
  if (cudaMemAdvise(p, static_cast<size_t>(bytes), cudaMemAdviseSetPreferredLocation, here) != cudaSuccess ||
      cudaMemAdvise(p, static_cast<size_t>(bytes), cudaMemAdviseSetAccessedBy, host) != cudaSuccess)
    cudaGetLastError();
  sample_memory();
  return p;
}

bool CudaBackend::holds(const void* p) const {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeManaged || (a.type == cudaMemoryTypeDevice && a.device == device_);
}

void CudaBackend::raw_free(void* p, int64_t bytes) {
  if (!drain(("leaving " + core::format_bytes(bytes) + " of device memory allocated").c_str())) return;
  DeviceGuard guard;
  cudaSetDevice(device_);
  const cudaError_t status = cudaFree(p);
  if (status != cudaSuccess) {
    cudaGetLastError();
    core::logger().error("{}: cudaFree of {}: {}", name(), core::format_bytes(bytes), cudaGetErrorString(status));
  }
}

uint64_t CudaBackend::record(Stream& s) {
  std::lock_guard<std::mutex> lock(s.mu);
  s.reap();
  cudaEvent_t event = nullptr;
  if (s.idle.empty()) {
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), name(), "cudaEventCreateWithFlags");
  } else {
    event = s.idle.back();
    s.idle.pop_back();
  }
  const cudaError_t status = cudaEventRecord(event, s.stream);
  if (status != cudaSuccess) {
    s.idle.push_back(event);
    check(status, name(), "cudaEventRecord");
  }
  s.pending.emplace_back(++s.queued, event);
  return s.queued;
}

// The wait is enqueued under the lock: the event cannot go back to the pool, and be recorded again, before it.
void CudaBackend::order_after(Stream& waiter, Stream& s, uint64_t sequence) {
  if (sequence == 0) return;
  std::lock_guard<std::mutex> lock(s.mu);
  FERRY_CHECK(sequence <= s.queued, "{}: waiting for an event this device never issued", name());
  s.reap();
  if (sequence <= s.landed) return;
  for (const auto& [seq, event] : s.pending)
    if (seq == sequence) {
      check(cudaStreamWaitEvent(waiter.stream, event, 0), name(), "cudaStreamWaitEvent");
      return;
    }
}

// The copy is queued outside the lock and its event inside: events are still recorded in sequence order,
// each after its own copy, so an event's completion still means every copy queued before it has landed, and
// a pageable copy that CUDA stages in the call does not hold up other threads' queries.
CopyEvent CudaBackend::copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) {
  check_copy(dst, offset, src, bytes);
  DeviceGuard guard(device_, name());
  if (bytes > 0)
    check(cudaMemcpyAsync(static_cast<char*>(dst.data()) + offset, src, static_cast<size_t>(bytes),
                          cudaMemcpyHostToDevice, stream_->stream),
          name(), "cudaMemcpyAsync to the device");
  return {record(*stream_)};
}

CopyEvent CudaBackend::copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                            ComputeEvent after) {
  check_copy(dst, offset, src, bytes);
  DeviceGuard guard(device_, name());
  order_after(*stream_, *compute_, after.sequence);
  return copy_to_device(dst, offset, src, bytes);
}

void CudaBackend::copy_to_host(void* dst, const DeviceBuffer& src, int64_t offset, int64_t bytes,
                               std::chrono::milliseconds timeout) {
  FERRY_CHECK(src.backend() == this, "{}: reading a buffer of another device", name());
  FERRY_CHECK(offset >= 0 && bytes >= 0 && offset <= src.bytes() && bytes <= src.bytes() - offset,
              "{}: reading {} bytes at offset {} overruns a buffer of {}", name(), bytes, offset, src.bytes());
  FERRY_CHECK(dst || bytes == 0, "{}: reading into a null pointer", name());
  DeviceGuard guard(device_, name());
  if (bytes > 0)
    check(cudaMemcpyAsync(dst, static_cast<const char*>(src.data()) + offset, static_cast<size_t>(bytes),
                          cudaMemcpyDeviceToHost, stream_->stream),
          name(), "cudaMemcpyAsync to the host");
  wait_for(*stream_, record(*stream_), timeout);
}

std::shared_ptr<void> CudaBackend::pin_host(void* p, int64_t bytes) {
  auto registration = std::make_shared<HostRegistration>(p, bytes, HostAccess::ReadWrite);
  return pinned_handle(bytes, std::move(registration));
}

bool CudaBackend::supports(ops::Kind kind) const { return has_kernel(kind); }

// `reads` serves the simulated device's overwrite check; here the streams' events order copies and ops.
ComputeEvent CudaBackend::run(const ops::Op& op, CopyEvent after, DeviceRange) {
  DeviceGuard guard(device_, name());
  order_after(*compute_, *stream_, after.sequence);
  launch_op(op, compute_->stream, name());
  return {record(*compute_)};
}

bool CudaBackend::landed(Stream& s, uint64_t sequence) const {
  std::lock_guard<std::mutex> lock(s.mu);
  FERRY_CHECK(sequence <= s.queued, "{}: an event this device never issued", name());
  if (sequence > s.landed) s.reap();
  return s.landed >= sequence;
}

bool CudaBackend::completed(CopyEvent e) const { return landed(*stream_, e.sequence); }
bool CudaBackend::completed(ComputeEvent e) const { return landed(*compute_, e.sequence); }

void CudaBackend::wait(CopyEvent e, std::chrono::milliseconds timeout) const {
  wait_for(*stream_, e.sequence, timeout);
}

void CudaBackend::wait(ComputeEvent e, std::chrono::milliseconds timeout) const {
  wait_for(*compute_, e.sequence, timeout);
}

void CudaBackend::wait_for(Stream& s, uint64_t sequence, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // A small copy or op completes within microseconds: poll without sleeping first, then back off to naps of at
  // most a millisecond, so that a long one costs little CPU and is still seen soon after it completes.
  int polls = 0;
  std::chrono::microseconds nap(10);
  while (!landed(s, sequence)) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline)
      FERRY_THROW("{}: {} within {} ms", name(), &s == stream_.get() ? "a copy did not land" : "an op did not finish",
                  timeout.count());
    if (++polls <= 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(nap, deadline - now));
      nap = std::min(nap * 2, std::chrono::microseconds(1000));
    }
  }
}

void CudaBackend::pause() {
  Gate& g = stream_->gate;
  {
    std::lock_guard<std::mutex> lock(g.mu);
    g.open = false;
  }
  DeviceGuard guard(device_, name());
  const cudaError_t status = cudaLaunchHostFunc(stream_->stream, &Gate::hold, &g);
  if (status != cudaSuccess) {
    resume();
    check(status, name(), "cudaLaunchHostFunc");
  }
}

void CudaBackend::resume() {
  Gate& g = stream_->gate;
  {
    std::lock_guard<std::mutex> lock(g.mu);
    g.open = true;
  }
  g.cv.notify_all();
}

std::unique_ptr<Backend> make_cuda_backend(int device) { return std::make_unique<CudaBackend>(device); }

std::string pci_bus_id(int device) {
  char id[64] = {};
  check(cudaDeviceGetPCIBusId(id, sizeof id, device), device_name(device), "cudaDeviceGetPCIBusId");
  std::string s(id);
  // sysfs spells the address in lower case with a 4-digit PCI domain; CUDA may give upper case or 8 digits.
  const size_t colon = s.find(':');
  if (colon != std::string::npos && colon > 4) s.erase(0, colon - 4);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace ferry::runtime::cuda
