// The serve scheduler: `parallel` slots, a bounded FIFO of waiters, timeouts, shutdown.
#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "launch/server/request_queue.h"
#include "test_errors.h"

namespace {

using ferry::launch::server::RequestQueue;
using namespace std::chrono_literals;
using Status = RequestQueue::Status;

// Polls until `cond` holds (or 5 s pass: the test then fails on what it checks next).
template <class F>
void wait_until(F cond) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!cond() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
}

TEST(RequestQueue, RunsParallelThenQueuesThenRefuses) {
  RequestQueue q(2, 1);
  auto a = q.acquire(1s), b = q.acquire(1s);
  ASSERT_EQ(a.status, Status::Running);
  ASSERT_EQ(b.status, Status::Running);
  EXPECT_EQ(q.stats().running, 2);

  RequestQueue::Admission c;
  std::thread waiter([&] { c = q.acquire(5s); });
  wait_until([&] { return q.stats().waiting == 1; });
  EXPECT_EQ(q.acquire(1s).status, Status::Full);  // the one place in the queue is taken

  a.lease.release();
  waiter.join();
  EXPECT_EQ(c.status, Status::Running);
  EXPECT_TRUE(c.lease);
  EXPECT_EQ(q.stats().running, 2);
  EXPECT_EQ(q.stats().waiting, 0);
}

TEST(RequestQueue, WaitersRunInArrivalOrder) {
  RequestQueue q(1, 8);
  auto first = q.acquire(1s);
  std::mutex m;
  std::vector<int> order;
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto a = q.acquire(5s);
      ASSERT_EQ(a.status, Status::Running);
      std::lock_guard lock(m);
      order.push_back(i);
    });
    wait_until([&] { return q.stats().waiting == i + 1; });  // queued in the order 0, 1, 2, 3
  }
  first.lease.release();
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(q.stats().running, 0);
}

TEST(RequestQueue, WaitTimesOutAndLeavesTheQueue) {
  RequestQueue q(1, 4);
  auto held = q.acquire(1s);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(q.acquire(30ms).status, Status::TimedOut);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  EXPECT_EQ(q.stats().waiting, 0);
  held.lease.release();
  EXPECT_EQ(q.acquire(0ms).status, Status::Running);  // a free slot needs no wait
}

TEST(RequestQueue, CloseWakesWaitersAndRefusesNewOnes) {
  RequestQueue q(1, 4);
  auto held = q.acquire(1s);
  RequestQueue::Admission waiting;
  std::thread t([&] { waiting = q.acquire(10s); });
  wait_until([&] { return q.stats().waiting == 1; });
  q.close();
  t.join();
  EXPECT_EQ(waiting.status, Status::Closed);
  EXPECT_FALSE(waiting.lease);
  EXPECT_EQ(q.acquire(1s).status, Status::Closed);
  EXPECT_FALSE(q.wait_idle(10ms));  // the running one still holds its slot
  RequestQueue::Lease moved = std::move(held.lease);
  EXPECT_FALSE(held.lease);
  moved.release();
  EXPECT_TRUE(q.wait_idle(10ms));
}

TEST(RequestQueue, RejectsBadSizes) {
  EXPECT_NE(ferry_test::error_of([] { RequestQueue(0, 1); }).find("--parallel"), std::string::npos);
  EXPECT_NE(ferry_test::error_of([] { RequestQueue(1, -1); }).find("--queue"), std::string::npos);
}

}  // namespace
