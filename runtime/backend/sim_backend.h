// A budgeted host-backed device that behaves as a GPU of a given capacity and, optionally, a given host-link
// bandwidth: `--gpu sim:24GiB` or `--gpu sim:24GiB@25GB/s`. Its memory is host RAM accounted in its own ledger
// (refused beyond the capacity and the plan, as a GPU's would be), and copies into it run in order on a copy
// stream — a worker thread — that stays busy for bytes / bandwidth of modeled time per copy, so that caching,
// eviction, streaming and the overlap of copies with compute run and are tested without a GPU. Its compute
// stream is a second worker thread that runs ops in order (the "GPU kernels", which are the host's ops on this
// host memory, in a oneTBB arena of its own), so that the host's own work overlaps it as it would a GPU's. The
// simulator also checks what no real device can: a copy landing in memory that an op queued and not yet finished
// reads is counted (overwrite_conflicts) — the proof that slots are never refilled under a reader — and it lets
// tests watch each op as it runs (SimOpObserver).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include <tbb/task_arena.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/worker_threads.h"

namespace ferry::runtime {

struct SimDeviceSpec {
  int64_t capacity = 0;
  double link_bytes_per_s = 0;  // 0: copies take only the memcpy's time
  // Whether its ops may name only its own memory, as a GPU's kernels can (the forward pass and offload bound to
  // it); false lets tests use it as an asynchronous host, with ops on the host's buffers.
  bool strict = true;
};

// "sim:24GiB" or "sim:24GiB@25GB/s"; throws ferry::Error naming the text when it is anything else.
SimDeviceSpec parse_sim_device(std::string_view spec);
std::string sim_device_name(const SimDeviceSpec& spec);  // "sim:24.00 GiB@25.0GB/s"

struct LinkStats {
  int64_t queued = 0;  // copies queued (landed or not), in the order of their events' sequences
  int64_t copies = 0;
  int64_t bytes = 0;
  double modeled_seconds = 0;  // sum over copies of bytes / bandwidth (0 without a bandwidth)
  double busy_seconds = 0;     // wall time the stream spent copying: the modeled time, or memcpy's if longer
  int64_t max_in_flight = 0;   // most copies queued and not landed at once (copies issued ahead of their use)
};

struct ComputeStats {
  int64_t ops_run = 0;              // ops run
  double busy_seconds = 0;          // wall time the compute stream spent running ops
  double copy_wait_seconds = 0;     // time ops waited for the copy they depend on to land
  int64_t overwrite_conflicts = 0;  // copies that landed in memory read by an op that had not finished
};

// Called on the compute stream's thread around every op it runs: what tests use to check the bytes an op reads
// at the moment it reads them, or to hold the stream at a chosen op. An exception thrown here fails the op.
class SimOpObserver {
 public:
  virtual ~SimOpObserver() = default;
  virtual void before(const ops::Op&) {}
  virtual void after(const ops::Op&) {}
};

class SimBackend final : public Backend {
 public:
  explicit SimBackend(const SimDeviceSpec& spec);
  ~SimBackend() override;  // lets the queued copies land, then stops the stream; free its buffers first

  bool host_addressable() const override { return true; }
  // Its own allocations when strict; any memory otherwise.
  bool holds(const void* p) const override;
  CopyEvent copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) override;
  bool completed(CopyEvent e) const override;
  void wait(CopyEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;
  bool supports(ops::Kind) const override { return true; }
  ComputeEvent run(const ops::Op& op, CopyEvent after = {}, DeviceRange reads = {}) override;
  bool completed(ComputeEvent e) const override;
  void wait(ComputeEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;
  CopyEvent copy_to_device_after(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes,
                                 ComputeEvent after) override;

  const SimDeviceSpec& spec() const { return spec_; }
  LinkStats link_stats() const;
  ComputeStats compute_stats() const;
  int64_t pending_work() const;  // ops queued or running, not finished
  // Watches every op the compute stream runs from now on (nullptr: none); must outlive them.
  void set_observer(SimOpObserver* observer);
  void reset_max_in_flight();  // LinkStats::max_in_flight from now on (e.g. after the weights were placed)

  // Holds the stream before its next copy until resume() (or until a buffer is freed, which waits for the
  // stream as cudaFree does): tests use it to observe a copy that has not landed.
  void pause();
  void resume();
  // The same for the compute stream (before its next op); freeing a buffer releases it too.
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
    ops::Op op;
    uint64_t after_copy;
    DeviceRange reads;
    uint64_t sequence;
  };
  void stream_loop();
  void compute_loop();
  void hold(bool& paused, bool on);
  // Throws naming the op and the field when a pointer it names lies outside this device's allocations: a GPU's
  // kernel cannot dereference host memory, so the simulated device refuses what a real one would fault on.
  void check_device_memory(const ops::Op& op) const;  // sets a stream's pause flag under mu_ and wakes the streams
  // Under mu_: whether [dst, dst + bytes) overlaps memory read by an op that has not finished and
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
  std::exception_ptr failure_;  // the first exception thrown by an op
  uint64_t failed_sequence_ = 0;
  ComputeStats compute_stats_;
  SimOpObserver* observer_ = nullptr;
  mutable std::mutex allocations_mu_;
  std::map<uintptr_t, int64_t> allocations_;  // start -> bytes, every allocation of this device
  // The compute stream's ops run in an arena as wide as the one the device was created in, so that their tile
  // loops see the same thread slots as the session's scratch.
  WorkerArena arena_;
  std::thread stream_, compute_;
};

}  // namespace ferry::runtime
