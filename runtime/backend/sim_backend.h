// A budgeted host-backed device that behaves as a GPU of a given capacity and, optionally, a given host-link
// bandwidth: `--gpu sim:24GiB` or `--gpu sim:24GiB@25GB/s`. Its memory is host RAM accounted in its own ledger
// (refused beyond the capacity and the plan, as a GPU's would be), and copies into it run in order on a copy
// stream — a worker thread — that stays busy for bytes / bandwidth of modeled time per copy, so that caching,
// eviction, streaming and the overlap of copies with compute run and are tested without a GPU. Its compute
// stream is a second worker thread that runs launched work in order (the "GPU kernels", which are the CPU's
// kernels on this host memory), so that the host's own work overlaps it as it would a GPU's. The simulator
// also checks what no real device can: a copy landing in memory that launched, not yet finished, work reads
// is counted (overwrite_conflicts) — the proof that slots are never refilled under a reader.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "runtime/backend/backend.h"

namespace ferry::runtime {

struct SimDeviceSpec {
  int64_t capacity = 0;
  double link_bytes_per_s = 0;  // 0: copies take only the memcpy's time
};

// "sim:24GiB" or "sim:24GiB@25GB/s"; throws ferry::Error naming the text when it is anything else.
SimDeviceSpec parse_sim_device(std::string_view spec);
std::string sim_device_name(const SimDeviceSpec& spec);  // "sim:24.00 GiB@25.0GB/s"

struct LinkStats {
  int64_t copies = 0;
  int64_t bytes = 0;
  double modeled_seconds = 0;  // sum over copies of bytes / bandwidth (0 without a bandwidth)
  double busy_seconds = 0;     // wall time the stream spent copying: the modeled time, or memcpy's if longer
  int64_t max_in_flight = 0;   // most copies queued and not landed at once (copies issued ahead of their use)
};

struct ComputeStats {
  int64_t launches = 0;
  double busy_seconds = 0;          // wall time the compute stream spent running work
  double copy_wait_seconds = 0;     // time launched work waited for the copy it depends on to land
  int64_t overwrite_conflicts = 0;  // copies that landed in memory read by launched work that had not finished
};

class SimBackend final : public Backend {
 public:
  explicit SimBackend(const SimDeviceSpec& spec);
  ~SimBackend() override;  // lets the queued copies land, then stops the stream; free its buffers first

  bool host_addressable() const override { return true; }
  CopyEvent copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) override;
  bool completed(CopyEvent e) const override;
  void wait(CopyEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;
  KernelEvent launch(std::function<void()> work, CopyEvent after = {}, DeviceRange reads = {}) override;
  bool completed(KernelEvent e) const override;
  void wait(KernelEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;
  CopyEvent copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                 KernelEvent after) override;

  const SimDeviceSpec& spec() const { return spec_; }
  LinkStats link_stats() const;
  ComputeStats compute_stats() const;
  int64_t pending_work() const;  // launched pieces of work that have not finished
  void reset_max_in_flight();    // LinkStats::max_in_flight from now on (e.g. after the weights were placed)

  // Holds the stream before its next copy until resume() (or until a buffer is freed, which waits for the
  // stream as cudaFree does): tests use it to observe a copy that has not landed.
  void pause();
  void resume();
  // The same for the compute stream (before its next launched work); freeing a buffer releases it too.
  void pause_compute();
  void resume_compute();

 protected:
  void* raw_allocate(int64_t bytes) override;
  void raw_free(void* p, int64_t bytes) override;

 private:
  struct Copy {
    char* dst;
    const void* src;
    int64_t bytes;
    uint64_t sequence;
    uint64_t after_kernel;
  };
  struct Work {
    std::function<void()> fn;
    uint64_t after_copy;
    DeviceRange reads;
    uint64_t sequence;
  };
  void stream_loop();
  void compute_loop();
  void hold(bool& paused, bool on);  // sets a stream's pause flag under mu_ and wakes the streams
  // Under mu_: whether [dst, dst + bytes) overlaps memory read by launched work that has not finished and
  // runs before the first work waiting for the copy `copy` (or a later one) to land.
  bool read_by_pending_work(const char* dst, int64_t bytes, uint64_t copy) const;

  SimDeviceSpec spec_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Copy> queue_;
  uint64_t issued_ = 0, landed_ = 0;
  bool paused_ = false, stopping_ = false;
  LinkStats stats_;
  std::deque<Work> work_;
  uint64_t launched_ = 0, ran_ = 0;
  bool compute_paused_ = false;
  std::exception_ptr failure_;  // the first exception thrown by launched work
  uint64_t failed_sequence_ = 0;
  ComputeStats compute_stats_;
  std::thread stream_, compute_;
};

}  // namespace ferry::runtime
