// Backends and their memory accounting: the ledger refuses allocations beyond the plan or the device and
// tracks high-water marks exactly, and releases a reservation that goes without reaching its owner; the host
// backend and the simulated device copy bytes where they are asked to, the simulated device in order, with
// events that complete only once a copy has landed; its compute stream runs launched work in order, each
// piece after the copy it waits for, beside the caller, and it counts a copy that lands under work still
// reading the memory.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/sim_backend.h"
#include "test_errors.h"

namespace ferry::runtime {
namespace {

using core::kGiB;
using core::kMiB;

using ferry_test::error_of;

TEST(MemoryLedger, RefusesBeyondThePlanNamingTheClassAndChangesNothing) {
  MemoryLedger l("sim:1.00 GiB", core::kGiB);
  l.set_planned(MemoryClass::ExpertCache, 100 * core::kMiB);
  l.reserve(MemoryClass::ExpertCache, 60 * core::kMiB);
  const std::string e = error_of([&] { l.reserve(MemoryClass::ExpertCache, 41 * core::kMiB); });
  EXPECT_NE(e.find("expert cache"), std::string::npos) << e;
  EXPECT_NE(e.find("sim:1.00 GiB"), std::string::npos) << e;
  EXPECT_NE(e.find("exceed its plan"), std::string::npos) << e;
  EXPECT_EQ(l.usage(MemoryClass::ExpertCache).current, 60 * core::kMiB);  // the refused one left no trace
  l.reserve(MemoryClass::ExpertCache, 40 * core::kMiB);                   // exactly up to the plan is fine
  EXPECT_EQ(l.usage(MemoryClass::ExpertCache).current, 100 * core::kMiB);
}

TEST(MemoryLedger, RefusesBeyondTheDeviceEvenWithinThePlans) {
  MemoryLedger l("dev", 10 * core::kMiB);
  l.reserve(MemoryClass::Weights, 6 * core::kMiB);
  const std::string e = error_of([&] { l.reserve(MemoryClass::Kv, 5 * core::kMiB); });
  EXPECT_NE(e.find("kv cache"), std::string::npos) << e;
  EXPECT_NE(e.find("device"), std::string::npos) << e;
  EXPECT_EQ(l.total_current(), 6 * core::kMiB);
}

TEST(MemoryLedger, HighWaterMarksPerClassAndInAll) {
  MemoryLedger l("host");
  l.reserve(MemoryClass::Workspace, 5);
  l.reserve(MemoryClass::Staging, 7);
  l.release(MemoryClass::Workspace, 5);
  l.reserve(MemoryClass::Workspace, 3);
  EXPECT_EQ(l.usage(MemoryClass::Workspace).high_water, 5);
  EXPECT_EQ(l.usage(MemoryClass::Workspace).current, 3);
  EXPECT_EQ(l.total_high_water(), 12);
  EXPECT_EQ(l.total_current(), 10);
  EXPECT_FALSE(error_of([&] { l.release(MemoryClass::Staging, 8); }).empty());
}

// The device's own figure next to the plan: the share is high-water / planned, and the verdict flips at the
// tolerance on either side (2% by default).
TEST(MeasuredMemory, TheLineGivesTheShareOfThePlanAndWhetherItIsWithinTolerance) {
  MeasuredMemory m{80 * kGiB, 79 * kGiB, 59 * kGiB, 20 * kGiB};
  const std::string within = measured_memory_line(m, 20 * kGiB);
  EXPECT_NE(within.find("100.0% of the 20.00 GiB planned: within the plan"), std::string::npos) << within;
  EXPECT_NE(within.find("59.00 GiB free now of 80.00 GiB"), std::string::npos) << within;
  m.used_high_water = 20 * kGiB + 20 * kGiB / 50 + 1;  // 2% over, and a byte
  EXPECT_NE(measured_memory_line(m, 20 * kGiB).find("over the plan"), std::string::npos);
  m.used_high_water = 20 * kGiB + 20 * kGiB / 51;
  EXPECT_NE(measured_memory_line(m, 20 * kGiB).find("within the plan"), std::string::npos);
  m.used_high_water = 20 * kGiB - 20 * kGiB / 51;
  EXPECT_NE(measured_memory_line(m, 20 * kGiB).find("within the plan"), std::string::npos);
  m.used_high_water = 19 * kGiB;
  EXPECT_NE(measured_memory_line(m, 20 * kGiB).find("95.0% of the 20.00 GiB planned: under the plan"),
            std::string::npos);
  EXPECT_NE(measured_memory_line(m, 0).find("nothing planned"), std::string::npos);
}

// Only a device that measures itself reports: the host and the simulated device have their ledgers alone.
TEST(MeasuredMemory, TheHostAndTheSimulatedDeviceHaveNoneOfTheirOwn) {
  EXPECT_FALSE(cpu::CpuBackend().measured_memory().has_value());
  EXPECT_FALSE(SimBackend(parse_sim_device("sim:1MiB")).measured_memory().has_value());
}

TEST(MemoryLedger, ConcurrentReservationsNeverOvershootThePlan) {
  MemoryLedger l("dev");
  l.set_planned(MemoryClass::ExpertCache, 1000);
  std::atomic<int> granted{0};
  std::vector<std::thread> t;
  for (int i = 0; i < 4; ++i)
    t.emplace_back([&] {
      for (int k = 0; k < 500; ++k) try {
          l.reserve(MemoryClass::ExpertCache, 1);
          ++granted;
        } catch (const Error&) {
        }
    });
  for (auto& x : t) x.join();
  EXPECT_EQ(granted.load(), 1000);
  EXPECT_EQ(l.usage(MemoryClass::ExpertCache).high_water, 1000);
}

TEST(MemoryLedger, AClassLendsOnlyWhatItDoesNotHoldAndTheBorrowerKeepsItsMostPlanned) {
  MemoryLedger l("dev", 1000);
  l.set_planned(MemoryClass::ExpertCache, 600);
  l.set_planned(MemoryClass::Workspace, 100);
  l.reserve(MemoryClass::ExpertCache, 300);
  const std::string e = error_of([&] { l.lend(MemoryClass::ExpertCache, MemoryClass::Workspace, 301); });
  EXPECT_NE(e.find("expert cache cannot lend"), std::string::npos) << e;
  EXPECT_EQ(l.usage(MemoryClass::ExpertCache).planned, 600);  // refused: nothing moved
  EXPECT_EQ(l.usage(MemoryClass::Workspace).planned, 100);
  l.lend(MemoryClass::ExpertCache, MemoryClass::Workspace, 300);
  l.reserve(MemoryClass::Workspace, 400);  // the borrowed room
  EXPECT_NE(error_of([&] { l.reserve(MemoryClass::ExpertCache, 1); }).find("exceed its plan"), std::string::npos);
  l.release(MemoryClass::Workspace, 300);
  l.lend(MemoryClass::Workspace, MemoryClass::ExpertCache, 300);
  EXPECT_EQ(l.usage(MemoryClass::Workspace).planned, 100);
  EXPECT_EQ(l.usage(MemoryClass::Workspace).planned_high, 400);
  EXPECT_EQ(l.usage(MemoryClass::Workspace).high_water, 400);
  EXPECT_EQ(l.usage(MemoryClass::ExpertCache).planned, 600);
  EXPECT_EQ(l.usage(MemoryClass::ExpertCache).planned_high, 600);
  l.reserve(MemoryClass::ExpertCache, 300);  // the cache's room is back
}

TEST(MemoryLedger, AReservationIsReleasedWhenAnErrorLeavesItsScope) {
  MemoryLedger l("dev");
  l.set_planned(MemoryClass::Kv, 100);
  const std::string e = error_of([&] {
    MemoryLedger::Reservation r(l, MemoryClass::Kv, 60);
    EXPECT_EQ(l.usage(MemoryClass::Kv).current, 60);
    MemoryLedger::Reservation beyond(l, MemoryClass::Kv, 41);  // refused: holds nothing
  });
  EXPECT_NE(e.find("exceed its plan"), std::string::npos) << e;
  EXPECT_EQ(l.usage(MemoryClass::Kv).current, 0);
  EXPECT_EQ(l.usage(MemoryClass::Kv).high_water, 60);
}

TEST(MemoryLedger, ACommittedReservationStaysForItsOwnerToRelease) {
  MemoryLedger l("dev");
  {
    MemoryLedger::Reservation r(l, MemoryClass::Weights, 7);
    r.commit();
  }
  EXPECT_EQ(l.usage(MemoryClass::Weights).current, 7);
  l.release(MemoryClass::Weights, 7);
  EXPECT_EQ(l.total_current(), 0);
}

TEST(MemoryLedger, AReservationMovesWithOneOwner) {
  MemoryLedger l("dev");
  MemoryLedger::Reservation kept;
  {
    MemoryLedger::Reservation a(l, MemoryClass::Staging, 5);
    MemoryLedger::Reservation b(std::move(a));
    kept = std::move(b);
  }
  EXPECT_EQ(l.usage(MemoryClass::Staging).current, 5);             // the moved-from ones released nothing
  kept = MemoryLedger::Reservation(l, MemoryClass::Workspace, 3);  // assignment releases what it held
  EXPECT_EQ(l.usage(MemoryClass::Staging).current, 0);
  EXPECT_EQ(l.usage(MemoryClass::Workspace).current, 3);
  kept = MemoryLedger::Reservation();
  EXPECT_EQ(l.total_current(), 0);
}

// A host backend whose allocator fails after the ledger has agreed.
class FailingHost : public cpu::CpuBackend {
 protected:
  void* raw_allocate(int64_t) override { FERRY_THROW("out of host memory (test)"); }
};

TEST(Backend, AFailedAllocationLeavesNothingReserved) {
  FailingHost host;
  EXPECT_NE(error_of([&] { host.allocate(MemoryClass::Kv, 100); }).find("out of host memory"), std::string::npos);
  EXPECT_NE(error_of([&] { host.allocate_host_addressable(MemoryClass::Weights, 100); }).find("out of host memory"),
            std::string::npos);
  EXPECT_EQ(host.ledger().total_current(), 0);
  EXPECT_EQ(host.ledger().total_high_water(), 100);
}

TEST(Backend, BuffersAreAccountedAndReleasedWithTheirOwner) {
  cpu::CpuBackend host;
  host.ledger().set_planned(MemoryClass::Kv, 4096);
  {
    DeviceBuffer a = host.allocate(MemoryClass::Kv, 4000);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
    EXPECT_EQ(host.ledger().usage(MemoryClass::Kv).current, 4000);
    EXPECT_FALSE(error_of([&] { host.allocate(MemoryClass::Kv, 97); }).empty());
    DeviceBuffer b = std::move(a);  // moving keeps one owner
    EXPECT_EQ(host.ledger().usage(MemoryClass::Kv).current, 4000);
  }
  EXPECT_EQ(host.ledger().usage(MemoryClass::Kv).current, 0);
  EXPECT_EQ(host.ledger().usage(MemoryClass::Kv).high_water, 4000);
}

TEST(Backend, HostCopiesLandAtTheOffsetAndOverrunsAreRefused) {
  cpu::CpuBackend host;
  DeviceBuffer b = host.allocate(MemoryClass::Staging, 16);
  std::vector<uint8_t> src(8);
  std::iota(src.begin(), src.end(), 1);
  std::memset(b.data(), 0, 16);
  host.wait(host.copy_to_device(b, 4, src.data(), 8));
  const auto* d = static_cast<const uint8_t*>(b.data());
  for (int i = 0; i < 16; ++i) EXPECT_EQ(d[i], i >= 4 && i < 12 ? i - 3 : 0) << i;
  EXPECT_NE(error_of([&] { (void)host.copy_to_device(b, 9, src.data(), 8); }).find("overruns"), std::string::npos);
  cpu::CpuBackend other;
  DeviceBuffer o = other.allocate(MemoryClass::Staging, 16);
  EXPECT_NE(error_of([&] { (void)host.copy_to_device(o, 0, src.data(), 8); }).find("another device"),
            std::string::npos);
}

TEST(SimDevice, ParsesCapacityAndBandwidthAndRejectsNonsense) {
  const SimDeviceSpec a = parse_sim_device("sim:24GiB");
  EXPECT_EQ(a.capacity, 24 * core::kGiB);
  EXPECT_EQ(a.link_bytes_per_s, 0.0);
  const SimDeviceSpec b = parse_sim_device("sim:512MiB@25GB/s");
  EXPECT_EQ(b.capacity, 512 * core::kMiB);
  EXPECT_DOUBLE_EQ(b.link_bytes_per_s, 25e9);
  for (const char* bad : {"sim:", "sim:0", "sim:24GiB@", "sim:24GiB@0GB/s", "sim:-1GiB", "rtx3090", "sim:24XB"})
    EXPECT_FALSE(error_of([&] { parse_sim_device(bad); }).empty()) << bad;
}

TEST(SimDevice, CapacityIsTheDevicesNotTheHosts) {
  SimBackend dev(parse_sim_device("sim:1MiB"));
  DeviceBuffer a = dev.allocate(MemoryClass::Weights, 768 * 1024);
  const std::string e = error_of([&] { dev.allocate(MemoryClass::ExpertCache, 512 * 1024); });
  EXPECT_NE(e.find("expert cache"), std::string::npos) << e;
  EXPECT_NE(e.find("sim:1.00 MiB"), std::string::npos) << e;
}

TEST(SimDevice, CopiesLandInOrderAndEventsWaitForThem) {
  SimBackend dev(parse_sim_device("sim:1MiB"));
  DeviceBuffer b = dev.allocate(MemoryClass::ExpertCache, 4096);
  std::vector<uint8_t> first(4096, 1), second(2048, 2);
  dev.pause();
  const CopyEvent e1 = dev.copy_to_device(b, 0, first.data(), 4096);
  const CopyEvent e2 = dev.copy_to_device(b, 0, second.data(), 2048);  // overwrites the first half, later
  EXPECT_FALSE(dev.completed(e1));
  EXPECT_FALSE(dev.completed(e2));
  EXPECT_NE(error_of([&] { dev.wait(e1, std::chrono::milliseconds(20)); }).find("did not land"), std::string::npos);
  dev.resume();
  dev.wait(e2);
  EXPECT_TRUE(dev.completed(e1));  // in order: e2 landed, so e1 did
  const auto* d = static_cast<const uint8_t*>(b.data());
  EXPECT_EQ(d[0], 2);
  EXPECT_EQ(d[2047], 2);
  EXPECT_EQ(d[2048], 1);
  EXPECT_EQ(d[4095], 1);
  EXPECT_EQ(dev.link_stats().copies, 2);
  EXPECT_EQ(dev.link_stats().bytes, 6144);
}

TEST(SimDevice, ModeledLinkTimeIsBytesOverBandwidth) {
  SimBackend dev(parse_sim_device("sim:64MiB@1GB/s"));
  DeviceBuffer b = dev.allocate(MemoryClass::Staging, 4 * core::kMiB);
  std::vector<uint8_t> src(static_cast<size_t>(4 * core::kMiB), 7);
  CopyEvent e;
  for (int i = 0; i < 3; ++i) e = dev.copy_to_device(b, 0, src.data(), 4 * core::kMiB);
  dev.wait(e);
  EXPECT_EQ(dev.link_stats().bytes, 12 * core::kMiB);
  EXPECT_DOUBLE_EQ(dev.link_stats().modeled_seconds, 3 * (4.0 * core::kMiB / 1e9));
}

TEST(SimDevice, FreeingABufferWaitsForCopiesStillQueuedIntoIt) {
  std::vector<uint8_t> src(1024, 9);
  auto dev = std::make_unique<SimBackend>(parse_sim_device("sim:1MiB"));
  DeviceBuffer b = dev->allocate(MemoryClass::Staging, 1024);
  dev->pause();
  (void)dev->copy_to_device(b, 0, src.data(), 1024);  // waited for by the free below
  EXPECT_EQ(dev->link_stats().copies, 0);
  b.reset();  // must not free memory a queued copy still writes
  EXPECT_EQ(dev->link_stats().copies, 1);
  EXPECT_EQ(dev->ledger().total_current(), 0);
  dev.reset();  // joins the stream without hanging
}

// Ops observed on the compute stream's thread, by kind, in the order they ran.
struct KindLog final : SimOpObserver {
  std::vector<ops::Kind> ran;
  void before(const ops::Op& op) override { ran.push_back(ops::kind_of(op)); }
};

// out = x + x for n floats: a small op whose result shows that it ran, and after what.
ops::AddStreams doubling(const float* x, float* out, int64_t n) {
  return ops::AddStreams{.a = x, .b = x, .n = 1, .streams = 1, .d = n, .out = out};
}

// These tests run ops on the host's vectors: the device as an asynchronous host, not as a GPU.
SimDeviceSpec host_buffers_allowed(SimDeviceSpec s) {
  s.strict = false;
  return s;
}

// As a GPU faults on host memory, the simulated device refuses an op naming memory it did not allocate, with the
// op and the field, before it queues anything; its own buffers (both kinds of allocation) are fine.
TEST(SimDevice, RefusesAnOpOnMemoryItDoesNotHold) {
  SimBackend dev(parse_sim_device("sim:1MiB"));
  DeviceBuffer b = dev.allocate(MemoryClass::Workspace, 256);
  void* shared = dev.allocate_host_addressable(MemoryClass::Workspace, 256);
  std::vector<float> host(64, 1.0f);
  auto* own = static_cast<float*>(b.data());
  EXPECT_TRUE(dev.holds(own + 63));
  EXPECT_TRUE(dev.holds(shared));
  EXPECT_FALSE(dev.holds(own + 64));  // one past the end
  EXPECT_FALSE(dev.holds(host.data()));
  const std::string e = error_of([&] { (void)dev.run(doubling(host.data(), own, 64)); });
  EXPECT_NE(e.find("add_streams's `a` is not in this device's memory"), std::string::npos) << e;
  EXPECT_EQ(dev.pending_work(), 0);
  dev.wait(dev.run(doubling(own, static_cast<float*>(shared), 64)));
  dev.free_host_addressable(MemoryClass::Workspace, shared, 256);
  EXPECT_TRUE(SimBackend(host_buffers_allowed(parse_sim_device("sim:1MiB"))).holds(host.data()));
  EXPECT_TRUE(cpu::CpuBackend().holds(host.data()));
}

TEST(SimDevice, OpsRunInOrderAfterTheirCopyBesideTheCaller) {
  SimBackend dev(host_buffers_allowed(parse_sim_device("sim:1MiB")));
  KindLog log;
  dev.set_observer(&log);
  DeviceBuffer b = dev.allocate(MemoryClass::ExpertCache, 64);
  std::vector<float> src(16, 1.5f), gathered(16), doubled(16);
  const int32_t row0 = 0;
  dev.pause();
  const CopyEvent c = dev.copy_to_device(b, 0, src.data(), 64);
  // Reads what the copy brought, then the second op reads what the first wrote.
  const ComputeEvent k1 = dev.run(ops::GatherRows{.src = static_cast<const float*>(b.data()),
                                                  .d = 16,
                                                  .index = &row0,
                                                  .div = 1,
                                                  .m = 1,
                                                  .dst = gathered.data()},
                                  c, {b.data(), 64});
  const ComputeEvent k2 = dev.run(doubling(gathered.data(), doubled.data(), 16));
  EXPECT_FALSE(dev.completed(k1));  // its copy has not landed, so neither it nor the op behind it ran
  EXPECT_FALSE(dev.completed(k2));
  EXPECT_EQ(dev.pending_work(), 2);
  EXPECT_NE(error_of([&] { dev.wait(k2, std::chrono::milliseconds(20)); }).find("did not finish"), std::string::npos);
  dev.resume();
  dev.wait(k2);
  EXPECT_TRUE(dev.completed(k1));
  EXPECT_EQ(log.ran, (std::vector<ops::Kind>{ops::Kind::GatherRows, ops::Kind::AddStreams}));
  EXPECT_EQ(doubled, std::vector<float>(16, 3.0f));
  EXPECT_EQ(dev.compute_stats().ops_run, 2);
  EXPECT_EQ(dev.compute_stats().overwrite_conflicts, 0);
  EXPECT_GT(dev.compute_stats().copy_wait_seconds, 0.0);
  dev.set_observer(nullptr);
}

TEST(SimDevice, CountsACopyLandingUnderAReaderAndARefillAfterItDoesNot) {
  SimBackend dev(host_buffers_allowed(parse_sim_device("sim:1MiB")));
  DeviceBuffer slot = dev.allocate(MemoryClass::ExpertCache, 256), other = dev.allocate(MemoryClass::ExpertCache, 256);
  std::vector<uint8_t> src(256, 1);
  std::vector<float> out(64);
  const float* slot_floats = static_cast<const float*>(slot.data());
  dev.pause_compute();
  const ComputeEvent reader = dev.run(doubling(slot_floats, out.data(), 64), {}, {slot.data(), 256});
  dev.wait(dev.copy_to_device(other, 0, src.data(), 256));  // elsewhere: fine
  EXPECT_EQ(dev.compute_stats().overwrite_conflicts, 0);
  dev.wait(dev.copy_to_device(slot, 128, src.data(), 16));  // under the reader: the bug the count exposes
  EXPECT_EQ(dev.compute_stats().overwrite_conflicts, 1);
  const CopyEvent refill = dev.copy_to_device_after(slot, 0, src.data(), 256, reader);
  // The next reader waits for the refill: it is no conflict that it has not run yet.
  const ComputeEvent next = dev.run(doubling(slot_floats, out.data(), 64), refill, {slot.data(), 256});
  EXPECT_FALSE(dev.completed(refill));  // held behind the reader, which the paused stream has not run
  dev.resume_compute();
  dev.wait(next);
  EXPECT_TRUE(dev.completed(refill));
  EXPECT_EQ(dev.compute_stats().overwrite_conflicts, 1);
}

TEST(SimDevice, AnErrorInAnOpReachesTheWaitAndLaterOpsStillRun) {
  SimBackend dev(host_buffers_allowed(parse_sim_device("sim:1MiB")));
  std::vector<float> x(8, 1.0f), y(8, 0.0f), z(8, 0.0f);
  const double freqs[2] = {1.0, 0.5};
  const ComputeEvent ok = dev.run(doubling(x.data(), y.data(), 8));
  // Two frequencies rotate 4 dims, not the 6 this head's rope part has: the op refuses to run.
  const ComputeEvent bad =
      dev.run(ops::Rope{.x = x.data(), .n = 1, .heads = 1, .head_dim = 8, .offset = 2, .freqs = {freqs, 2}});
  const ComputeEvent after = dev.run(doubling(y.data(), z.data(), 8));
  EXPECT_NE(error_of([&] { dev.wait(after); }).find("rope part"), std::string::npos);
  EXPECT_EQ(z, std::vector<float>(8, 4.0f));  // ran, after the op before the failure
  EXPECT_NO_THROW(dev.wait(ok));              // ops before the failure are fine
  EXPECT_NE(error_of([&] { dev.wait(bad); }).find("rope part"), std::string::npos);
}

TEST(HostBackend, RunComputesTheOpAtOnce) {
  cpu::CpuBackend host;
  std::vector<float> x(4, 2.0f), y(4, 0.0f);
  const ComputeEvent e = host.run(doubling(x.data(), y.data(), 4));
  EXPECT_EQ(y, std::vector<float>(4, 4.0f));
  EXPECT_TRUE(host.completed(e));
  EXPECT_TRUE(host.supports(ops::Kind::Attention));
}

}  // namespace
}  // namespace ferry::runtime
