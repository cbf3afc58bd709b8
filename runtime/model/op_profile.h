// Where a feed's time goes, by part of the forward pass (`ferry bench decode`): the session's op stream times each
// op it issues under the phase the forward code is in, the host's share of offloaded experts and the waits. Off
// (no profile attached) it costs a null-pointer test per op; the phase itself is one store per scope.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string_view>

namespace ferry::runtime {

enum class OpPhase : uint8_t {
  Attention,      // query/KV projections, compressors, attention, output projection
  Indexer,        // the lightning indexer's compressor, queries and top-k selection (CSA layers)
  Router,         // gate projection and top-k
  SharedExperts,  // the shared expert MLP
  Experts,        // routed experts issued on the layer's stream (the layer's device: the CPU in a CPU-only run)
  HostExperts,    // routed experts an expert provider computes on the host beside the device (offload)
  Copies,         // issuing expert copies to the device (offload)
  Waits,          // the host waiting for the layer's device
  Other,          // embedding, mHC mixing, norms, the combine, the head
};
constexpr size_t kOpPhases = 9;
std::string_view op_phase_name(OpPhase p);

class OpProfile {
 public:
  using Clock = std::chrono::steady_clock;
  struct Times {
    std::array<double, kOpPhases> seconds{};
    std::array<int64_t, kOpPhases> ops{};
    double total() const;
  };

  void add(OpPhase p, Clock::time_point t0) {
    host_.seconds[static_cast<size_t>(p)] += std::chrono::duration<double>(Clock::now() - t0).count();
    ++host_.ops[static_cast<size_t>(p)];
  }
  // An asynchronous device: the phase of each op issued, in order, taken back when the device runs it
  // (device_ran, called on the device's thread).
  void set_async_device(bool on) { async_ = on; }
  bool async_device() const { return async_; }
  void issued(OpPhase p);
  void device_ran(double seconds);

  void clear();
  const Times& host() const { return host_; }  // time of the host thread, by phase
  Times device() const;                        // time of the device's compute stream, by phase

 private:
  Times host_;
  bool async_ = false;
  mutable std::mutex mutex_;  // the device's side
  std::deque<OpPhase> pending_;
  Times device_;
};

// Sets the phase of `phase` (an OpStream's) for a scope.
class PhaseScope {
 public:
  PhaseScope(OpPhase& phase, OpPhase p) : phase_(phase), saved_(phase) { phase_ = p; }
  ~PhaseScope() { phase_ = saved_; }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  OpPhase& phase_;
  OpPhase saved_;
};

}  // namespace ferry::runtime
