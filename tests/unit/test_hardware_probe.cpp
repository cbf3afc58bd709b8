#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "planner/core/units.h"
#include "planner/hardware.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/backend/worker_threads.h"

using namespace ferry;
using runtime::DeviceReport;
using runtime::preset_for_device_name;

namespace {

// MemTotal from /proc/meminfo, read independently of hwloc; 0 when the file is missing (not Linux).
int64_t meminfo_total_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    int64_t kib = 0;
    if (fields >> key >> kib && key == "MemTotal:") return kib * 1024;
  }
  return 0;
}

}  // namespace

TEST(HardwareProbe, HostHasMemoryNumaAndCores) {
  std::vector<std::string> notes;
  const planner::HostSpec host = runtime::probe_host(notes);
  EXPECT_GT(host.ram_bytes, 0);
  EXPECT_GE(host.numa_nodes, 1);
  EXPECT_GE(host.cores, 1);
  EXPECT_EQ(host.cores, runtime::allowed_physical_cores()) << "the plan's cores are not the workers' default";
  EXPECT_TRUE(host.probed);
  EXPECT_DOUBLE_EQ(host.memory_bandwidth, planner::kDefaultHostBandwidth);
  EXPECT_DOUBLE_EQ(host.gflops_per_core, planner::kDefaultGflopsPerCore);
  EXPECT_FALSE(notes.empty()) << "the assumed memory bandwidth must be noted";

  const int64_t meminfo = meminfo_total_bytes();
  if (meminfo == 0) GTEST_SKIP() << "no /proc/meminfo";
  EXPECT_LE(std::abs(static_cast<double>(host.ram_bytes - meminfo)), 0.01 * static_cast<double>(meminfo))
      << "hwloc: " << host.ram_bytes << " bytes, /proc/meminfo: " << meminfo << " bytes";
}

TEST(HardwareProbe, MapsRealDeviceNamesToPresets) {
  EXPECT_EQ(preset_for_device_name("NVIDIA GeForce RTX 3090"), "rtx3090");
  EXPECT_EQ(preset_for_device_name("NVIDIA GeForce RTX 3090 Ti"), "rtx3090ti");
  EXPECT_EQ(preset_for_device_name("NVIDIA GeForce RTX 4090"), "rtx4090");
  EXPECT_EQ(preset_for_device_name("NVIDIA GeForce RTX 5090"), "rtx5090");
  EXPECT_EQ(preset_for_device_name("NVIDIA H100 80GB HBM3"), "h100");
  EXPECT_EQ(preset_for_device_name("NVIDIA H100 PCIe"), "h100");
  EXPECT_EQ(preset_for_device_name("NVIDIA H200"), "h200");
  EXPECT_EQ(preset_for_device_name("NVIDIA H200 NVL"), "h200");
  EXPECT_EQ(preset_for_device_name("NVIDIA RTX A6000"), "a6000");
  EXPECT_EQ(preset_for_device_name("NVIDIA RTX 6000 Ada Generation"), "rtx6000ada");
  EXPECT_EQ(preset_for_device_name("NVIDIA RTX PRO 6000 Blackwell Workstation Edition"), "rtxpro6000");
  EXPECT_EQ(preset_for_device_name("nvidia geforce rtx 4090"), "rtx4090");
}

TEST(HardwareProbe, UnknownDeviceNamesHaveNoPreset) {
  EXPECT_EQ(preset_for_device_name("Tesla K80"), std::nullopt);
  EXPECT_EQ(preset_for_device_name("Quadro RTX 6000"), std::nullopt);
  EXPECT_EQ(preset_for_device_name("NVIDIA GH200 480GB"), std::nullopt);
  EXPECT_EQ(preset_for_device_name("NVIDIA GeForce RTX 4090 Laptop GPU"), std::nullopt);
  EXPECT_EQ(preset_for_device_name(""), std::nullopt);
}

TEST(HardwareProbe, KnownCardTakesPresetThroughputAndMeasuredMemory) {
  DeviceReport report{"NVIDIA GeForce RTX 4090", 24 * core::kGiB, 23 * core::kGiB, 1008e9, "sm_89"};
  std::vector<std::string> notes;
  const planner::GpuSpec g = runtime::gpu_spec_from_report(0, report, notes);
  EXPECT_EQ(g.name, "NVIDIA GeForce RTX 4090");
  EXPECT_EQ(g.memory_bytes, 24 * core::kGiB);
  EXPECT_EQ(g.free_bytes, 23 * core::kGiB);
  EXPECT_DOUBLE_EQ(g.memory_bandwidth, 1008e9);
  EXPECT_DOUBLE_EQ(g.bf16_tflops, 165);
  EXPECT_EQ(g.pcie, planner::PcieGen::Gen4);
  EXPECT_EQ(g.sm, "sm_89");
  EXPECT_TRUE(g.probed);
  EXPECT_TRUE(notes.empty());
}

TEST(HardwareProbe, UnknownCardGetsReferenceDefaultsWithNotes) {
  DeviceReport report{"Tesla K80", 12 * core::kGiB, 11 * core::kGiB, 0, "sm_37"};
  std::vector<std::string> notes;
  const planner::GpuSpec g = runtime::gpu_spec_from_report(1, report, notes);
  EXPECT_EQ(g.name, "Tesla K80");
  EXPECT_DOUBLE_EQ(g.bf16_tflops, 71);
  EXPECT_EQ(g.pcie, planner::PcieGen::Gen4);
  EXPECT_DOUBLE_EQ(g.memory_bandwidth, 936e9);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[0].find("cuda:1"), std::string::npos);
}

TEST(HardwareProbe, ProbeHardwareNeverThrowsAndExplainsMissingGpus) {
  runtime::ProbeResult result;
  ASSERT_NO_THROW(result = runtime::probe_hardware());
  const planner::Hardware& hw = result.hardware;
  EXPECT_EQ(hw.source, "probed");
  EXPECT_EQ(hw.nodes, 1);
  EXPECT_EQ(hw.gpu_reserve_bytes, planner::kDefaultGpuReserve);
  EXPECT_EQ(hw.host_reserve_bytes, planner::kDefaultHostReserve);
  EXPECT_GT(hw.host.ram_bytes, 0);
  EXPECT_FALSE(planner::describe(hw).empty());
  if (hw.gpus.empty()) {
    bool explained = false;
    for (const auto& n : result.notes) explained |= n.find("CPU only") != std::string::npos;
    EXPECT_TRUE(explained) << "no GPU and no note saying why";
  }
  for (const auto& g : hw.gpus) {
    EXPECT_TRUE(g.probed);
    EXPECT_GT(g.memory_bytes, 0);
  }
}
