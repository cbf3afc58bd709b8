#include "runtime/model/op_profile.h"

#include <numeric>

namespace ferry::runtime {

std::string_view op_phase_name(OpPhase p) {
  static constexpr std::array<std::string_view, kOpPhases> kNames{
      "attention",      "indexer", "router", "shared expert", "experts (layer stream)",
      "experts (host)", "copies",  "waits",  "other"};
  return kNames[static_cast<size_t>(p)];
}

double OpProfile::Times::total() const { return std::accumulate(seconds.begin(), seconds.end(), 0.0); }

void OpProfile::issued(OpPhase p) {
  std::lock_guard lock(mutex_);
  pending_.push_back(p);
}

void OpProfile::device_ran(double seconds) {
  std::lock_guard lock(mutex_);
  // An op issued outside the session's stream (none today) counts as Other rather than failing the device.
  size_t i = static_cast<size_t>(OpPhase::Other);
  if (!pending_.empty()) {
    i = static_cast<size_t>(pending_.front());
    pending_.pop_front();
  }
  device_.seconds[i] += seconds;
  ++device_.ops[i];
}

void OpProfile::clear() {
  host_ = {};
  std::lock_guard lock(mutex_);
  device_ = {};
}

OpProfile::Times OpProfile::device() const {
  std::lock_guard lock(mutex_);
  return device_;
}

}  // namespace ferry::runtime
