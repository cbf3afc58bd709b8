// The GPU expert cache's slots against a simulated device's events: a slot follows the copy filling it and the ops
// reading it (Loading until the copy lands, pinned until its readers have run), and emptying the cache for a
// prefill's workspace waits for both before it forgets every expert.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "offload/expert_cache.h"
#include "planner/core/error.h"
#include "runtime/backend/sim_backend.h"
#include "test_errors.h"

namespace ferry::offload {
namespace {

using ferry_test::error_of;

// A simulated device whose ops may read the test's host vectors.
runtime::SimDeviceSpec test_device() {
  runtime::SimDeviceSpec spec = runtime::parse_sim_device("sim:1MiB");
  spec.strict = false;
  return spec;
}

// An op on `dev` that reads the 64 bytes of `slot` (into `out`, 16 floats).
runtime::ComputeEvent read_slot(runtime::SimBackend& dev, const runtime::DeviceBuffer& slot, std::vector<float>& out) {
  const auto* floats = static_cast<const float*>(slot.data());
  return dev.run(runtime::ops::AddStreams{.a = floats, .b = floats, .n = 1, .streams = 1, .d = 16, .out = out.data()});
}

// The cache owns its slots' device events: a fill's slot stays Loading until its copy has landed and sync()
// sees it; a reader's pin holds the slot (never a victim) until its op has run.
TEST(ExpertCacheEvents, SlotsFollowTheirFillAndReaderEvents) {
  runtime::SimBackend dev(test_device());
  ExpertCache cache({1}, 4);
  runtime::DeviceBuffer slot = dev.allocate(runtime::MemoryClass::ExpertCache, 64);
  std::vector<float> src(16, 2.0f), out(16);
  dev.pause();
  const Lookup miss = cache.lookup(0, 1);
  ASSERT_EQ(miss.kind, LookupKind::Miss);
  cache.filling(0, miss.slot, dev.copy_to_device(slot, 0, src.data(), 64));
  cache.sync(dev);
  EXPECT_EQ(cache.slot_info(0, miss.slot).state, SlotState::Loading);  // the copy has not landed
  EXPECT_EQ(cache.fill_event(0, miss.slot).sequence, 1u);
  dev.resume();
  dev.wait(cache.fill_event(0, miss.slot));
  cache.sync(dev);
  EXPECT_EQ(cache.slot_info(0, miss.slot).state, SlotState::Ready);

  // The lookup's pin is handed to the op that reads the slot: still pinned until that op has run.
  dev.pause_compute();
  const runtime::ComputeEvent reader = read_slot(dev, slot, out);
  cache.reading(0, miss.slot, reader);
  cache.sync(dev);
  EXPECT_EQ(cache.slot_info(0, miss.slot).pins, 1);
  EXPECT_EQ(cache.lookup(0, 2).kind, LookupKind::NoSlot);  // the only slot is read: never a victim
  dev.resume_compute();
  dev.wait(reader);
  cache.sync(dev);
  EXPECT_EQ(cache.slot_info(0, miss.slot).pins, 0);
  // Handing an op a pin the caller does not hold is a bug.
  EXPECT_NE(error_of([&] { cache.reading(0, miss.slot, reader); }).find("has not pinned"), std::string::npos);
  EXPECT_EQ(cache.lookup(0, 2).kind, LookupKind::Miss);  // now it can be refilled
}

TEST(ExpertCacheEvents, EmptyingWaitsForFillsAndReadersThenForgetsEveryExpert) {
  runtime::SimBackend dev(test_device());
  ExpertCache cache({2}, 4);
  runtime::DeviceBuffer a = dev.allocate(runtime::MemoryClass::ExpertCache, 64);
  runtime::DeviceBuffer b = dev.allocate(runtime::MemoryClass::ExpertCache, 64);
  std::vector<float> src(16, 2.0f), out(16);
  dev.pause();
  dev.pause_compute();
  const Lookup fill = cache.lookup(0, 1);  // a copy still landing
  cache.filling(0, fill.slot, dev.copy_to_device(a, 0, src.data(), 64));
  cache.release(0, fill.slot);
  const Lookup read = cache.lookup(0, 2);  // an op still reading
  cache.filling(0, read.slot, {});
  cache.loaded(0, read.slot);
  cache.reading(0, read.slot, read_slot(dev, b, out));
  std::atomic<bool> emptied = false;
  std::thread t([&] {
    cache.empty(dev);
    emptied = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(emptied) << "emptied while a copy landed in a slot and an op read one";
  dev.resume();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(emptied) << "emptied while an op read a slot";
  dev.resume_compute();
  t.join();
  EXPECT_TRUE(emptied);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(cache.slot_info(0, s).state, SlotState::Free);
    EXPECT_EQ(cache.slot_info(0, s).pins, 0);
  }
  EXPECT_FALSE(cache.contains(0, 1));
  EXPECT_FALSE(cache.contains(0, 2));
  EXPECT_EQ(cache.stats(0).misses, 2);  // counts stay
  EXPECT_EQ(cache.lookup(0, 1).kind, LookupKind::Miss);
  // A lookup's pin that no op holds: the slot may still be used; emptying refuses.
  EXPECT_NE(error_of([&] { cache.empty(dev); }).find("no op reads"), std::string::npos);
}

}  // namespace
}  // namespace ferry::offload
