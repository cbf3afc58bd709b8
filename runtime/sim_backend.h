// A budgeted host-backed device that behaves as a GPU of a given capacity and, optionally, a given host-link
// bandwidth: `--gpu sim:24GiB` or `--gpu sim:24GiB@25GB/s`. Its memory is host RAM accounted in its own ledger
// (refused beyond the capacity and the plan, as a GPU's would be), and copies into it run in order on a copy
// stream — a worker thread — that stays busy for bytes / bandwidth of modeled time per copy, so that caching,
// eviction, streaming and the overlap of copies with compute run and are tested without a GPU.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "runtime/backend.h"

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
};

class SimBackend final : public Backend {
 public:
  explicit SimBackend(const SimDeviceSpec& spec);
  ~SimBackend() override;  // lets the queued copies land, then stops the stream; free its buffers first

  bool host_addressable() const override { return true; }
  CopyEvent copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) override;
  bool completed(CopyEvent e) const override;
  void wait(CopyEvent e, std::chrono::milliseconds timeout = std::chrono::seconds(60)) const override;

  const SimDeviceSpec& spec() const { return spec_; }
  LinkStats link_stats() const;

  // Holds the stream before its next copy until resume() (or until a buffer is freed, which waits for the
  // stream as cudaFree does): tests use it to observe a copy that has not landed.
  void pause();
  void resume();

 protected:
  void* raw_allocate(int64_t bytes) override;
  void raw_free(void* p, int64_t bytes) override;

 private:
  struct Copy {
    char* dst;
    const void* src;
    int64_t bytes;
    uint64_t sequence;
  };
  void stream_loop();

  SimDeviceSpec spec_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Copy> queue_;
  uint64_t issued_ = 0, landed_ = 0;
  bool paused_ = false, stopping_ = false;
  LinkStats stats_;
  std::thread stream_;
};

}  // namespace ferry::runtime
