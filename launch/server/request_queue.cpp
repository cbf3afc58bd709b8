#include "launch/server/request_queue.h"

#include "planner/core/error.h"

namespace ferry::launch::server {

RequestQueue::Lease& RequestQueue::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    queue_ = std::exchange(other.queue_, nullptr);
  }
  return *this;
}

void RequestQueue::Lease::release() {
  if (queue_) std::exchange(queue_, nullptr)->release_slot();
}

RequestQueue::RequestQueue(int parallel, int capacity) : parallel_(parallel), capacity_(capacity) {
  FERRY_CHECK(parallel >= 1, "--parallel must be at least 1, got {}", parallel);
  FERRY_CHECK(capacity >= 0, "--queue must be >= 0, got {}", capacity);
}

RequestQueue::Admission RequestQueue::acquire(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (closed_) return {Status::Closed, {}};
  if (waiting_.empty() && running_ < parallel_) {
    ++running_;
    return {Status::Running, Lease(this)};
  }
  if (static_cast<int>(waiting_.size()) >= capacity_) return {Status::Full, {}};

  const uint64_t ticket = next_ticket_++;
  const auto place = waiting_.insert(waiting_.end(), ticket);
  const bool woken =
      changed_.wait_for(lock, timeout, [&] { return closed_ || (waiting_.front() == ticket && running_ < parallel_); });
  waiting_.erase(place);
  // Whatever happened, the one behind may now be first (and, with several free slots, run too).
  changed_.notify_all();
  if (!woken) return {Status::TimedOut, {}};
  if (closed_) return {Status::Closed, {}};
  ++running_;
  return {Status::Running, Lease(this)};
}

void RequestQueue::release_slot() {
  {
    std::lock_guard lock(mutex_);
    --running_;
  }
  changed_.notify_all();
}

void RequestQueue::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
}

bool RequestQueue::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return running_ == 0 && waiting_.empty(); });
}

RequestQueue::Stats RequestQueue::stats() const {
  std::lock_guard lock(mutex_);
  return {running_, static_cast<int64_t>(waiting_.size())};
}

}  // namespace ferry::launch::server
