#include "runtime/backend/sim_backend.h"

#include "runtime/backend/op_pointers.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/host_ops.h"

namespace ferry::runtime {

SimDeviceSpec parse_sim_device(std::string_view spec) {
  const std::string text(spec);
  FERRY_CHECK(spec.substr(0, 4) == "sim:",
              "--gpu {}: a simulated device is written sim:SIZE[@BANDWIDTH], e.g. sim:24GiB@25GB/s", text);
  std::string_view rest = spec.substr(4);
  SimDeviceSpec s;
  const size_t at = rest.find('@');
  s.capacity = core::parse_size(rest.substr(0, at), "--gpu " + text + " capacity");
  FERRY_CHECK(s.capacity > 0, "--gpu {}: the capacity must be positive", text);
  if (at != std::string_view::npos) {
    s.link_bytes_per_s = core::parse_bandwidth(rest.substr(at + 1), "--gpu " + text + " bandwidth");
    FERRY_CHECK(s.link_bytes_per_s > 0, "--gpu {}: the bandwidth must be positive", text);
  }
  return s;
}

std::string sim_device_name(const SimDeviceSpec& spec) {
  std::string name = "sim:" + core::format_bytes(spec.capacity);
  if (spec.link_bytes_per_s > 0) {
    char bw[32];
    std::snprintf(bw, sizeof bw, "@%.1fGB/s", spec.link_bytes_per_s / 1e9);
    name += bw;
  }
  return name;
}

SimBackend::SimBackend(const SimDeviceSpec& spec)
    : Backend(sim_device_name(spec), spec.capacity), spec_(spec), arena_(worker_threads()) {
  stream_ = std::thread([this] { stream_loop(); });
  compute_ = std::thread([this] { compute_loop(); });
}

SimBackend::~SimBackend() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    paused_ = false;
    compute_paused_ = false;
  }
  cv_.notify_all();
  compute_.join();
  stream_.join();
}

void* SimBackend::raw_allocate(int64_t bytes) {
  void* p = std::aligned_alloc(64, (static_cast<size_t>(bytes) + 63) / 64 * 64);
  if (!p) FERRY_THROW("{}: out of host memory backing {}", name(), core::format_bytes(bytes));
  std::lock_guard<std::mutex> lock(allocations_mu_);
  allocations_[reinterpret_cast<uintptr_t>(p)] = bytes;
  return p;
}

// As cudaFree does, freeing waits for the stream: a queued copy may still target this memory.
void SimBackend::raw_free(void* p, int64_t) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    paused_ = false;
    compute_paused_ = false;  // a queued copy may wait for launched work
    cv_.notify_all();
    cv_.wait(lock, [this] { return landed_ == issued_; });
  }
  {
    std::lock_guard<std::mutex> lock(allocations_mu_);
    allocations_.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
}

CopyEvent SimBackend::copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) {
  return copy_to_device_after(dst, offset, src, bytes, {});
}

CopyEvent SimBackend::copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                           ComputeEvent after) {
  check_copy(dst, offset, src, bytes);
  CopyEvent e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    e.sequence = ++issued_;
    stats_.queued = static_cast<int64_t>(issued_);
    queue_.push_back({static_cast<char*>(dst.data()) + offset, src, bytes, e.sequence, after.sequence});
    stats_.max_in_flight = std::max(stats_.max_in_flight, static_cast<int64_t>(issued_ - landed_));
  }
  cv_.notify_all();
  return e;
}

bool SimBackend::holds(const void* p) const {
  if (!spec_.strict) return true;
  const auto at = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(allocations_mu_);
  auto it = allocations_.upper_bound(at);
  return it != allocations_.begin() && at < std::prev(it)->first + static_cast<uintptr_t>(std::prev(it)->second);
}

void SimBackend::check_device_memory(const ops::Op& op) const {
  for (const ops::OpPointer& a : ops::device_pointers(op))
    FERRY_CHECK(holds(a.p), "{}: {}'s `{}` is not in this device's memory (a GPU's kernel could not use it)", name(),
                ops::kind_name(ops::kind_of(op)), a.field);
}

ComputeEvent SimBackend::run(const ops::Op& op, CopyEvent after, DeviceRange reads) {
  check_device_memory(op);
  ComputeEvent e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FERRY_CHECK(after.sequence <= issued_, "{}: an op waits for a copy that was never queued", name());
    e.sequence = ++launched_;
    work_.push_back({op, after.sequence, reads, e.sequence});
  }
  cv_.notify_all();
  return e;
}

bool SimBackend::read_by_pending_work(const char* dst, int64_t bytes, uint64_t copy) const {
  for (const Work& w : work_) {
    // The stream is ordered: from the first work that waits for this copy on, everything reads the new bytes.
    if (w.after_copy >= copy) break;
    const char* r = static_cast<const char*>(w.reads.data);
    if (r && dst < r + w.reads.bytes && r < dst + bytes) return true;
  }
  return false;
}

void SimBackend::compute_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return (!work_.empty() && !compute_paused_) || (stopping_ && work_.empty()); });
    if (work_.empty()) return;  // stopping, and every launched piece of work has run
    Work& w = work_.front();
    // Like cudaStreamWaitEvent: the stream holds here until the copy the work reads has landed.
    const auto wait0 = std::chrono::steady_clock::now();
    cv_.wait(lock, [&] { return landed_ >= w.after_copy; });
    compute_stats_.copy_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - wait0).count();
    const ops::Op op = w.op;
    SimOpObserver* observer = observer_;
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    std::exception_ptr failed;
    try {
      if (observer) observer->before(op);
      arena_.execute([&] { run_on_host(op); });
      if (observer) observer->after(op);
    } catch (...) {
      failed = std::current_exception();
    }
    const double busy = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    lock.lock();
    // The work stays in the queue (its reads pending) until it has run, so a copy landing meanwhile is seen.
    const uint64_t seq = work_.front().sequence;
    work_.pop_front();
    ran_ = seq;
    ++compute_stats_.ops_run;
    compute_stats_.busy_seconds += busy;
    if (failed && !failure_) {
      failure_ = failed;
      failed_sequence_ = seq;
    }
    cv_.notify_all();
  }
}

bool SimBackend::completed(ComputeEvent e) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_ && e.sequence >= failed_sequence_) std::rethrow_exception(failure_);
  return ran_ >= e.sequence;
}

void SimBackend::wait(ComputeEvent e, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return ran_ >= e.sequence; }))
    FERRY_THROW("{}: an op did not finish within {} ms", name(), timeout.count());
  if (failure_ && e.sequence >= failed_sequence_) std::rethrow_exception(failure_);
}

ComputeStats SimBackend::compute_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return compute_stats_;
}

void SimBackend::set_observer(SimOpObserver* observer) {
  std::lock_guard<std::mutex> lock(mu_);
  observer_ = observer;
}

int64_t SimBackend::pending_work() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(work_.size());
}

void SimBackend::reset_max_in_flight() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.max_in_flight = static_cast<int64_t>(issued_ - landed_);
}

void SimBackend::pause_compute() { hold(compute_paused_, true); }
void SimBackend::resume_compute() { hold(compute_paused_, false); }

void SimBackend::stream_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return (!queue_.empty() && !paused_) || (stopping_ && queue_.empty()); });
    if (queue_.empty()) return;  // stopping, and every queued copy has landed
    const Copy c = queue_.front();
    queue_.pop_front();
    // Like cudaStreamWaitEvent on the copy stream: a refill waits for the work that read the old contents.
    cv_.wait(lock, [&] { return ran_ >= c.after_kernel || (stopping_ && work_.empty()); });
    if (c.bytes > 0 && read_by_pending_work(c.dst, c.bytes, c.sequence)) ++compute_stats_.overwrite_conflicts;
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    if (c.bytes > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
    const double modeled = spec_.link_bytes_per_s > 0 ? static_cast<double>(c.bytes) / spec_.link_bytes_per_s : 0.0;
    // The link is busy for the modeled time even when memcpy was faster: later copies queue behind it.
    std::this_thread::sleep_until(start + std::chrono::duration<double>(modeled));
    const double busy = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    lock.lock();
    stats_.busy_seconds += busy;
    landed_ = c.sequence;
    ++stats_.copies;
    stats_.bytes += c.bytes;
    stats_.modeled_seconds += modeled;
    cv_.notify_all();
  }
}

bool SimBackend::completed(CopyEvent e) const {
  std::lock_guard<std::mutex> lock(mu_);
  return landed_ >= e.sequence;
}

void SimBackend::wait(CopyEvent e, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return landed_ >= e.sequence; }))
    FERRY_THROW("{}: a copy did not land within {} ms", name(), timeout.count());
}

LinkStats SimBackend::link_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void SimBackend::pause() { hold(paused_, true); }
void SimBackend::resume() { hold(paused_, false); }

void SimBackend::hold(bool& paused, bool on) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    paused = on;
  }
  cv_.notify_all();
}

}  // namespace ferry::runtime
