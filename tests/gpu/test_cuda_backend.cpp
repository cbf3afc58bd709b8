// The CUDA device as a Backend, on a machine with a GPU: the ledger refuses allocations beyond the plan,
// copies from pageable, pinned and registered host memory land exactly where they were sent, events complete
// in order, a wait on a held stream times out naming the device, and freeing or destroying with copies in
// flight is safe. Exit 77 (skipped) without a device, after checking that the entry points then refuse with
// a ferry::Error instead of crashing; in a build without CUDA, after checking they say so.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "planner/core/units.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/pinned_memory.h"
#include "runtime/backend/hardware_probe.h"
#include "test_errors.h"

#ifdef FERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ferry::runtime::cuda {
namespace {

using core::kMiB;
using ferry_test::error_of;

#ifdef FERRY_HAVE_CUDA

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

// The index of the first byte of `got` that differs from `want`, or -1.
int64_t first_difference(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  if (got.size() != want.size()) return 0;
  const auto m = std::mismatch(got.begin(), got.end(), want.begin());
  return m.first == got.end() ? -1 : m.first - got.begin();
}

// Copies `expected`'s bytes from `src` (host memory holding the same bytes) to `offset` of a zeroed device
// buffer, reads the whole buffer back and checks every byte, inside the copy and around it.
void expect_round_trip(CudaBackend& dev, const void* src, const std::vector<uint8_t>& expected, int64_t offset,
                       const std::string& kind) {
  SCOPED_TRACE(kind + ", " + std::to_string(expected.size()) + " bytes at offset " + std::to_string(offset));
  const auto n = static_cast<int64_t>(expected.size());
  const int64_t size = offset + n + 5;
  DeviceBuffer b = dev.allocate(MemoryClass::Staging, size);
  std::vector<uint8_t> want(static_cast<size_t>(size), 0);
  (void)dev.copy_to_device(b, 0, want.data(), size);  // the next copy's event is after it on the stream
  const CopyEvent e = dev.copy_to_device(b, offset, src, n);
  dev.wait(e);
  EXPECT_TRUE(dev.completed(e));
  std::memcpy(want.data() + offset, expected.data(), expected.size());
  std::vector<uint8_t> got(static_cast<size_t>(size), 0xAA);
  dev.copy_to_host(got.data(), b, 0, size);
  EXPECT_EQ(first_difference(got, want), -1);
}

const std::vector<std::pair<int64_t, size_t>> kCopies = {{0, 1}, {3, 4097}, {4096, 8 * core::kMiB + 3}};

TEST(CudaBackend, IsADeviceNamedByItsOrdinalWithTheDevicesMemory) {
  CudaBackend dev(0);
  EXPECT_EQ(dev.name(), "cuda:0");
  EXPECT_EQ(dev.device(), 0);
  EXPECT_FALSE(dev.host_addressable());
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  EXPECT_EQ(dev.ledger().capacity(), static_cast<int64_t>(total_bytes));
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  for (int bad : {count, -1}) {
    const std::string e = error_of([&] { make_cuda_backend(bad); });
    EXPECT_NE(e.find("cuda:" + std::to_string(bad) + ": no such device"), std::string::npos) << e;
  }
  EXPECT_EQ(pci_bus_id(0).size(), 12u) << pci_bus_id(0);  // 0000:17:00.0
}

TEST(CudaBackend, LedgerRefusesBeyondThePlanAndTheDeviceNamingTheClass) {
  CudaBackend dev(0);
  dev.ledger().set_planned(MemoryClass::ExpertCache, 64 * core::kMiB);
  {
    DeviceBuffer a = dev.allocate(MemoryClass::ExpertCache, 48 * core::kMiB);
    EXPECT_NE(a.data(), nullptr);
    const std::string e = error_of([&] { dev.allocate(MemoryClass::ExpertCache, 17 * core::kMiB); });
    EXPECT_NE(e.find("cuda:0"), std::string::npos) << e;
    EXPECT_NE(e.find("expert cache"), std::string::npos) << e;
    EXPECT_NE(e.find("exceed its plan"), std::string::npos) << e;
    EXPECT_EQ(dev.ledger().usage(MemoryClass::ExpertCache).current, 48 * core::kMiB);
    DeviceBuffer b = dev.allocate(MemoryClass::ExpertCache, 16 * core::kMiB);  // exactly up to the plan
    const std::string d = error_of([&] { dev.allocate(MemoryClass::Weights, dev.ledger().capacity()); });
    EXPECT_NE(d.find("weights"), std::string::npos) << d;
    EXPECT_NE(d.find("exceed the device's"), std::string::npos) << d;
    EXPECT_EQ(dev.ledger().total_current(), 64 * core::kMiB);
  }
  EXPECT_EQ(dev.ledger().total_current(), 0);
  EXPECT_EQ(dev.ledger().usage(MemoryClass::ExpertCache).high_water, 64 * core::kMiB);
}

TEST(CudaBackend, CopiesFromPageableAndPinnedMemoryLandExactly) {
  CudaBackend dev(0);
  uint32_t seed = 1;
  for (const auto& [offset, n] : kCopies) {
    const std::vector<uint8_t> bytes = pattern(n, seed++);
    expect_round_trip(dev, bytes.data(), bytes, offset, "pageable");
    for (HostCaching caching : {HostCaching::WriteBack, HostCaching::WriteCombined}) {
      PinnedBuffer pinned(static_cast<int64_t>(n), caching);
      ASSERT_EQ(pinned.bytes(), static_cast<int64_t>(n));
      std::memcpy(pinned.data(), bytes.data(), n);  // write-combined memory is only written by the CPU
      expect_round_trip(dev, pinned.data(), bytes, offset,
                        caching == HostCaching::WriteBack ? "pinned" : "pinned write-combined");
    }
  }
}

TEST(CudaBackend, CopiesFromRegisteredMemoryLandExactly) {
  CudaBackend dev(0);
  uint32_t seed = 100;
  for (const auto& [offset, n] : kCopies) {
    const std::vector<uint8_t> bytes = pattern(n, seed++);
    void* heap = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    ASSERT_NE(heap, nullptr);
    std::memcpy(heap, bytes.data(), n);
    {
      HostRegistration r(heap, static_cast<int64_t>(n));
      EXPECT_EQ(r.data(), heap);
      expect_round_trip(dev, heap, bytes, offset, "registered heap");
    }
    std::free(heap);

    void* anon = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(anon, MAP_FAILED);
    std::memcpy(anon, bytes.data(), n);
    {
      HostRegistration r(anon, static_cast<int64_t>(n));
      expect_round_trip(dev, anon, bytes, offset, "registered anonymous mapping");
    }
    munmap(anon, n);
  }
}

// The case the registration exists for: expert weights in a checkpoint file mapped read-only.
TEST(CudaBackend, CopiesFromAReadOnlyFileMappingLandExactly) {
  int supported = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&supported, cudaDevAttrHostRegisterReadOnlySupported, 0), cudaSuccess);
  const size_t n = 8 * core::kMiB + 3;
  const std::vector<uint8_t> bytes = pattern(n, 7);
  const auto path = std::filesystem::temp_directory_path() / ("ferry-test-cuda-" + std::to_string(getpid()));
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(n));
  std::FILE* f = std::fopen(path.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  void* map = mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fileno(f), 0);
  std::fclose(f);
  std::filesystem::remove(path);
  ASSERT_NE(map, MAP_FAILED);
  if (supported) {
    CudaBackend dev(0);
    HostRegistration r(map, static_cast<int64_t>(n), HostAccess::ReadOnly);
    expect_round_trip(dev, map, bytes, 5, "registered read-only file mapping");
  } else {
    const std::string e = error_of([&] { HostRegistration r(map, static_cast<int64_t>(n), HostAccess::ReadOnly); });
    std::printf("read-only registration is not supported here; it refuses with: %s\n", e.c_str());
    EXPECT_NE(e.find("cudaHostRegister"), std::string::npos) << e;
  }
  munmap(map, n);
}

TEST(PinnedMemory, OwnsItsMemoryAndGivesItBack) {
  PinnedBuffer a(core::kMiB);
  void* p = a.data();
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, p), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
  PinnedBuffer b = std::move(a);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.bytes(), 0);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.bytes(), core::kMiB);
  EXPECT_EQ(PinnedBuffer(0).data(), nullptr);
  EXPECT_NE(error_of([] { PinnedBuffer(-1); }).find("negative"), std::string::npos);

  std::vector<uint8_t> host(core::kMiB);
  {
    HostRegistration r(host.data(), core::kMiB);
    ASSERT_EQ(cudaPointerGetAttributes(&attr, host.data()), cudaSuccess);
    EXPECT_EQ(attr.type, cudaMemoryTypeHost);
    const std::string twice = error_of([&] { HostRegistration again(host.data(), core::kMiB); });
    EXPECT_NE(twice.find("cudaHostRegister"), std::string::npos) << twice;
    HostRegistration moved = std::move(r);
    EXPECT_EQ(r.data(), nullptr);
    EXPECT_EQ(moved.bytes(), core::kMiB);
  }
  ASSERT_EQ(cudaPointerGetAttributes(&attr, host.data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeUnregistered);
}

TEST(CudaBackend, EventsCompleteInOrder) {
  CudaBackend dev(0);
  constexpr int kCopiesQueued = 64;
  const std::vector<uint8_t> bytes = pattern(kCopiesQueued * core::kMiB, 3);
  PinnedBuffer src(static_cast<int64_t>(bytes.size()));
  std::memcpy(src.data(), bytes.data(), bytes.size());
  DeviceBuffer b = dev.allocate(MemoryClass::ExpertCache, static_cast<int64_t>(bytes.size()));
  dev.pause();
  std::vector<CopyEvent> events;
  for (int i = 0; i < kCopiesQueued; ++i)
    events.push_back(
        dev.copy_to_device(b, i * core::kMiB, static_cast<const char*>(src.data()) + i * core::kMiB, core::kMiB));
  for (const CopyEvent& e : events) EXPECT_FALSE(dev.completed(e));
  dev.resume();
  // Newest first: once a later copy is seen landed, every earlier one must be seen landed too.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool all = false;
  while (!all && std::chrono::steady_clock::now() < deadline) {
    bool later_landed = false;
    all = true;
    for (int i = kCopiesQueued - 1; i >= 0; --i) {
      const bool landed = dev.completed(events[static_cast<size_t>(i)]);
      EXPECT_FALSE(later_landed && !landed) << "copy " << i << " not landed after a later one";
      later_landed |= landed;
      all &= landed;
    }
  }
  EXPECT_TRUE(all);
  std::vector<uint8_t> got(bytes.size());
  dev.copy_to_host(got.data(), b, 0, b.bytes());
  EXPECT_EQ(first_difference(got, bytes), -1);
  EXPECT_TRUE(dev.completed(CopyEvent{}));
  EXPECT_NE(error_of([&] { dev.completed(CopyEvent{events.back().sequence + 100}); }).find("never issued"),
            std::string::npos);
}

TEST(CudaBackend, AWaitOnAHeldStreamTimesOutNamingTheDevice) {
  CudaBackend dev(0);
  const std::vector<uint8_t> bytes = pattern(core::kMiB, 9);
  PinnedBuffer src(core::kMiB);
  std::memcpy(src.data(), bytes.data(), bytes.size());
  DeviceBuffer b = dev.allocate(MemoryClass::Staging, core::kMiB);
  dev.pause();
  const CopyEvent e = dev.copy_to_device(b, 0, src.data(), core::kMiB);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = error_of([&] { dev.wait(e, std::chrono::milliseconds(50)); });
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(err.find("cuda:0: a copy did not land within 50 ms"), std::string::npos) << err;
  EXPECT_GE(waited, 0.05);
  EXPECT_LT(waited, 5.0);
  EXPECT_FALSE(dev.completed(e));
  dev.resume();
  dev.wait(e);
  std::vector<uint8_t> got(bytes.size());
  dev.copy_to_host(got.data(), b, 0, core::kMiB);
  EXPECT_EQ(first_difference(got, bytes), -1);
}

TEST(CudaBackend, FreeingOrDestroyingWithCopiesInFlightIsSafe) {
  CudaBackend dev(0);
  PinnedBuffer src(64 * core::kMiB);
  std::memset(src.data(), 0x5A, static_cast<size_t>(src.bytes()));
  DeviceBuffer b = dev.allocate(MemoryClass::ExpertCache, 64 * core::kMiB);
  dev.pause();
  const CopyEvent e = dev.copy_to_device(b, 0, src.data(), 64 * core::kMiB);
  EXPECT_FALSE(dev.completed(e));
  const auto t0 = std::chrono::steady_clock::now();
  b.reset();  // releases the hold and waits for the copy before cudaFree
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  EXPECT_TRUE(dev.completed(e));
  EXPECT_EQ(dev.ledger().total_current(), 0);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<uint8_t> bytes = pattern(4097, 11);
  expect_round_trip(dev, bytes.data(), bytes, 0, "pageable, after the free");

  auto held = std::make_unique<CudaBackend>(0);
  {
    DeviceBuffer x = held->allocate(MemoryClass::Staging, core::kMiB);
    (void)held->copy_to_device(x, 0, src.data(), core::kMiB);  // the free waits for it
  }
  held->pause();
  const auto t1 = std::chrono::steady_clock::now();
  held.reset();  // destroying a held stream releases it, and waits for the hold to end before freeing it
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), 10.0);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(CudaBackend, CopiesRefuseOverrunsAndBuffersOfOtherDevices) {
  CudaBackend dev(0);
  CudaBackend other(0);
  DeviceBuffer b = dev.allocate(MemoryClass::Staging, 16);
  DeviceBuffer o = other.allocate(MemoryClass::Staging, 16);
  std::vector<uint8_t> host(16);
  EXPECT_NE(error_of([&] { (void)dev.copy_to_device(b, 9, host.data(), 8); }).find("overruns"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)dev.copy_to_device(o, 0, host.data(), 8); }).find("another device"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dev.copy_to_host(host.data(), b, 9, 8); }).find("overruns"), std::string::npos);
  EXPECT_NE(error_of([&] { dev.copy_to_host(host.data(), o, 0, 8); }).find("another device"), std::string::npos);
}

TEST(CudaBackend, ThreadsCopyingAtOnceEachSeeTheirOwnCopiesLand) {
  CudaBackend dev(0);
  constexpr int kThreads = 4;
  constexpr int64_t kSlice = 4 * core::kMiB;
  DeviceBuffer b = dev.allocate(MemoryClass::ExpertCache, kThreads * kSlice);
  std::vector<std::vector<uint8_t>> slices;
  for (int t = 0; t < kThreads; ++t) slices.push_back(pattern(kSlice, 20 + t));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int64_t at = 0; at < kSlice; at += core::kMiB)
        dev.wait(dev.copy_to_device(b, t * kSlice + at, slices[static_cast<size_t>(t)].data() + at, core::kMiB));
    });
  for (auto& th : threads) th.join();
  std::vector<uint8_t> got(static_cast<size_t>(kSlice));
  for (int t = 0; t < kThreads; ++t) {
    dev.copy_to_host(got.data(), b, t * kSlice, kSlice);
    EXPECT_EQ(first_difference(got, slices[static_cast<size_t>(t)]), -1) << "thread " << t;
  }
}

// A backend works on its own device whatever the calling thread's current device is, and leaves that alone.
TEST(CudaBackend, LeavesTheThreadsCurrentDeviceAlone) {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  if (count < 2) GTEST_SKIP() << "needs two GPUs";
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  {
    CudaBackend dev(0);
    const std::vector<uint8_t> bytes = pattern(4097, 5);
    expect_round_trip(dev, bytes.data(), bytes, 0, "pageable, device 1 current");
    DeviceBuffer b = dev.allocate(MemoryClass::Staging, 64);
    cudaPointerAttributes attr{};
    ASSERT_EQ(cudaPointerGetAttributes(&attr, b.data()), cudaSuccess);
    EXPECT_EQ(attr.device, 0);
  }
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, 1);
  cudaSetDevice(0);
}

#endif  // FERRY_HAVE_CUDA

}  // namespace
}  // namespace ferry::runtime::cuda

int main([[maybe_unused]] int argc, [[maybe_unused]] char** argv) {
  using namespace ferry::runtime;
  // Without a device (or without CUDA) the entry points must refuse with a ferry::Error, not crash.
  const std::string refusal = ferry_test::error_of([] { cuda::make_cuda_backend(0); });
  const std::string pinned_refusal = ferry_test::error_of([] { cuda::PinnedBuffer(4096); });
#ifndef FERRY_HAVE_CUDA
  if (refusal.find("built without CUDA") == std::string::npos ||
      pinned_refusal.find("built without CUDA") == std::string::npos) {
    std::fprintf(stderr, "FAILED: without CUDA the entry points must say so, not '%s' / '%s'\n", refusal.c_str(),
                 pinned_refusal.c_str());
    return 1;
  }
  std::printf("built without CUDA (%s): skipped\n", refusal.c_str());
  return 77;
#else
  std::vector<std::string> notes;
  std::vector<ferry::planner::GpuSpec> gpus;
  try {
    gpus = probe_gpus(notes);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe_gpus threw: %s\n", e.what());
    return 1;
  }
  for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
  if (gpus.empty()) {
    if (refusal.find("cuda:0") == std::string::npos || pinned_refusal.find("pinned host memory") == std::string::npos) {
      std::fprintf(stderr, "FAILED: without a GPU the entry points must refuse naming what, not '%s' / '%s'\n",
                   refusal.c_str(), pinned_refusal.c_str());
      return 1;
    }
    std::printf("no GPU (make_cuda_backend(0): %s): skipped\n", refusal.c_str());
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
#endif
}
