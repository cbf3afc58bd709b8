// What one device holds, by class, against what the Plan gave it: every allocation on a backend is reserved
// here first. Allocation beyond the plan is a bug (the planner said it fits), so the ledger refuses it with an
// error naming the device and the class, instead of letting the process run out of memory later.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "planner/core/memory_class.h"

namespace ferry::runtime {

// The classes of the memory report, shared with the planner, which tags every planned byte with one.
using core::kMemoryClasses;
using core::memory_class_name;
using core::MemoryClass;

struct MemoryClassUsage {
  int64_t planned = 0;  // bytes the Plan gives this class; kUnplanned: no limit (a CPU-only run's host RAM)
  int64_t current = 0;
  int64_t high_water = 0;    // the most held at once
  int64_t planned_high = 0;  // the most planned at once: `planned`, or more while another class lends to it
};

// What a device itself says about its memory (cudaMemGetInfo), beside what its ledger counted: the ledger counts
// the bytes asked for; the device also spends its allocator's rounding, the context and other processes' memory.
struct MeasuredMemory {
  int64_t total = 0;          // the device's memory
  int64_t free_at_start = 0;  // free when the backend was created
  int64_t free_now = 0;
  int64_t used_high_water = 0;  // the most of free_at_start taken at once, sampled after every allocation
};

// "measured by the device: ..." — the device's high-water against `planned` bytes, with the share, and whether it
// is within `tolerance` (a fraction) of the plan.
std::string measured_memory_line(const MeasuredMemory& m, int64_t planned, double tolerance = 0.02);

class MemoryLedger {
 public:
  static constexpr int64_t kUnplanned = INT64_MAX;

  // `device` names the device in errors ("cuda:0", "sim:24GiB", "host"). `capacity`: the device's bytes in
  // all, checked on top of the per-class plan (kUnplanned: none).
  explicit MemoryLedger(std::string device, int64_t capacity = kUnplanned);

  const std::string& device() const { return device_; }
  int64_t capacity() const { return capacity_; }
  void set_planned(MemoryClass c, int64_t bytes);

  // Throws ferry::Error, and changes nothing, when `bytes` more of class `c` would exceed its plan or the
  // device's capacity. Thread-safe.
  void reserve(MemoryClass c, int64_t bytes);
  void release(MemoryClass c, int64_t bytes);
  // Moves `bytes` of plan from class `from` to class `to` (a prefill chunk's workspace borrowing the expert
  // cache's room: planner::DevicePlan::prefill_borrowed, and back). Throws ferry::Error, changing nothing, when
  // `from` holds more than would be left of its plan. Thread-safe.
  void lend(MemoryClass from, MemoryClass to, int64_t bytes);

  MemoryClassUsage usage(MemoryClass c) const;
  int64_t total_current() const;
  int64_t total_high_water() const;  // the most held at once over all classes

  class Reservation;

 private:
  std::string device_;
  int64_t capacity_;
  mutable std::mutex mu_;
  std::array<MemoryClassUsage, kMemoryClasses> by_class_{};
  int64_t total_ = 0, total_high_ = 0;
};

// Bytes of one class reserved for as long as this object lives, so that a failure between reserving and
// handing the bytes to their owner releases them without a hand-written rollback. The ledger outlives it.
class MemoryLedger::Reservation {
 public:
  Reservation() = default;
  // Reserves as MemoryLedger::reserve does (throwing, and holding nothing, when the bytes do not fit).
  Reservation(MemoryLedger& ledger, MemoryClass c, int64_t bytes);
  Reservation(Reservation&& o) noexcept;
  Reservation& operator=(Reservation&& o) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { reset(); }

  // The bytes stay reserved after this object is gone: their new owner releases them with
  // MemoryLedger::release.
  void commit() noexcept { ledger_ = nullptr; }

 private:
  void reset() noexcept;  // releases the bytes unless committed, moved from or empty

  MemoryLedger* ledger_ = nullptr;
  MemoryClass class_ = MemoryClass::Weights;
  int64_t bytes_ = 0;
};

}  // namespace ferry::runtime
