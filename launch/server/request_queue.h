// The scheduler of `ferry serve`: at most `parallel` requests generate at once (the model runs one sequence
// at a time today, so the default is 1); up to `capacity` more wait, in arrival order; beyond that a request
// is refused at once (the server answers 503). Every wait has a timeout.
//
// Waiting happens on the HTTP thread before any byte of the answer is sent, so that a refusal is a real 503.
// httplib 0.11 cannot tell a handler that its client left: a waiter whose client is gone keeps its place
// until its turn, and is then cancelled before the prompt is processed (the engine asks first).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>
#include <utility>

namespace ferry::launch::server {

class RequestQueue {
 public:
  // Holding one = one running slot; released on destruction. Must not outlive its queue.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept : queue_(std::exchange(other.queue_, nullptr)) {}
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { release(); }

    explicit operator bool() const { return queue_ != nullptr; }
    void release();

   private:
    friend class RequestQueue;
    explicit Lease(RequestQueue* queue) : queue_(queue) {}
    RequestQueue* queue_ = nullptr;
  };

  enum class Status {
    Running,   // the lease holds a slot
    Full,      // `capacity` requests already wait
    TimedOut,  // waited the whole timeout
    Closed,    // the server is shutting down
  };

  struct Admission {
    Status status = Status::Closed;
    Lease lease;
  };

  struct Stats {
    int64_t running = 0, waiting = 0;
  };

  RequestQueue(int parallel, int capacity);

  // Takes a running slot, waiting for one up to `timeout`.
  Admission acquire(std::chrono::milliseconds timeout);

  // Refuses every later acquire and wakes the waiters (they get Closed); running leases stay valid.
  void close();
  // Waits until no slot is held, up to `timeout`; false if some still are.
  bool wait_idle(std::chrono::milliseconds timeout);

  Stats stats() const;

 private:
  void release_slot();

  const int parallel_, capacity_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::list<uint64_t> waiting_;  // tickets in arrival order
  uint64_t next_ticket_ = 0;
  int running_ = 0;
  bool closed_ = false;
};

}  // namespace ferry::launch::server
