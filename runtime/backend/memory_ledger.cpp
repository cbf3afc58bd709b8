#include "runtime/backend/memory_ledger.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "planner/core/error.h"
#include "planner/core/units.h"

namespace ferry::runtime {

std::string measured_memory_line(const MeasuredMemory& m, int64_t planned, double tolerance) {
  const double share = planned > 0 ? static_cast<double>(m.used_high_water) / static_cast<double>(planned) : 0.0;
  const char* verdict = planned <= 0            ? "nothing planned"
                        : share > 1 + tolerance ? "over the plan"
                        : share < 1 - tolerance ? "under the plan"
                                                : "within the plan";
  return fmt::format(
      "measured by the device: {} taken at most (cudaMemGetInfo), {:.1f}% of the {} planned: {} "
      "(±{:.0f}%); {} free now of {}",
      core::format_bytes(m.used_high_water), 100 * share, core::format_bytes(planned), verdict, 100 * tolerance,
      core::format_bytes(m.free_now), core::format_bytes(m.total));
}

MemoryLedger::MemoryLedger(std::string device, int64_t capacity) : device_(std::move(device)), capacity_(capacity) {
  FERRY_CHECK(capacity_ >= 0, "{}: negative capacity", device_);
  for (auto& u : by_class_) u.planned = u.planned_high = kUnplanned;
}

void MemoryLedger::set_planned(MemoryClass c, int64_t bytes) {
  FERRY_CHECK(bytes >= 0, "{}: negative plan for {}", device_, memory_class_name(c));
  std::lock_guard<std::mutex> lock(mu_);
  MemoryClassUsage& u = by_class_[static_cast<size_t>(c)];
  u.planned = bytes;
  u.planned_high = bytes;
}

void MemoryLedger::lend(MemoryClass from, MemoryClass to, int64_t bytes) {
  FERRY_CHECK(bytes >= 0, "{}: lending a negative amount", device_);
  std::lock_guard<std::mutex> lock(mu_);
  MemoryClassUsage& f = by_class_[static_cast<size_t>(from)];
  MemoryClassUsage& t = by_class_[static_cast<size_t>(to)];
  FERRY_CHECK(f.planned != kUnplanned && t.planned != kUnplanned, "{}: lending between unplanned classes", device_);
  if (bytes > f.planned - f.current)
    FERRY_THROW("{}: {} cannot lend {} to {}: it holds {} of its {} planned", device_, memory_class_name(from),
                core::format_bytes(bytes), memory_class_name(to), core::format_bytes(f.current),
                core::format_bytes(f.planned));
  f.planned -= bytes;
  t.planned += bytes;
  t.planned_high = std::max(t.planned_high, t.planned);
}

void MemoryLedger::reserve(MemoryClass c, int64_t bytes) {
  FERRY_CHECK(bytes >= 0, "{}: negative allocation of {}", device_, memory_class_name(c));
  std::lock_guard<std::mutex> lock(mu_);
  MemoryClassUsage& u = by_class_[static_cast<size_t>(c)];
  if (bytes > u.planned - u.current)
    FERRY_THROW("{}: allocating {} of {} would exceed its plan ({} held of {} planned)", device_,
                core::format_bytes(bytes), memory_class_name(c), core::format_bytes(u.current),
                core::format_bytes(u.planned));
  if (bytes > capacity_ - total_)
    FERRY_THROW("{}: allocating {} of {} would exceed the device's {} ({} held)", device_, core::format_bytes(bytes),
                memory_class_name(c), core::format_bytes(capacity_), core::format_bytes(total_));
  u.current += bytes;
  u.high_water = std::max(u.high_water, u.current);
  total_ += bytes;
  total_high_ = std::max(total_high_, total_);
}

void MemoryLedger::release(MemoryClass c, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  MemoryClassUsage& u = by_class_[static_cast<size_t>(c)];
  FERRY_CHECK(bytes >= 0 && bytes <= u.current, "{}: releasing more {} than is held", device_, memory_class_name(c));
  u.current -= bytes;
  total_ -= bytes;
}

MemoryLedger::Reservation::Reservation(MemoryLedger& ledger, MemoryClass c, int64_t bytes) : class_(c), bytes_(bytes) {
  ledger.reserve(c, bytes);
  ledger_ = &ledger;
}

MemoryLedger::Reservation::Reservation(Reservation&& o) noexcept
    : ledger_(std::exchange(o.ledger_, nullptr)), class_(o.class_), bytes_(o.bytes_) {}

MemoryLedger::Reservation& MemoryLedger::Reservation::operator=(Reservation&& o) noexcept {
  if (this != &o) {
    reset();
    ledger_ = std::exchange(o.ledger_, nullptr);
    class_ = o.class_;
    bytes_ = o.bytes_;
  }
  return *this;
}

void MemoryLedger::Reservation::reset() noexcept {
  if (ledger_) std::exchange(ledger_, nullptr)->release(class_, bytes_);
}

MemoryClassUsage MemoryLedger::usage(MemoryClass c) const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_class_[static_cast<size_t>(c)];
}

int64_t MemoryLedger::total_current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_;
}

int64_t MemoryLedger::total_high_water() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_high_;
}

}  // namespace ferry::runtime
