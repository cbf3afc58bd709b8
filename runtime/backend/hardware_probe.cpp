#include "runtime/backend/hardware_probe.h"

#include <hwloc.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/worker_threads.h"

namespace ferry::runtime {

namespace {

// Owns one loaded hwloc topology.
class Topology {
 public:
  explicit Topology(unsigned long flags) {
    FERRY_CHECK(hwloc_topology_init(&topology_) == 0, "hwloc: cannot initialise a topology");
    if (hwloc_topology_set_flags(topology_, flags) != 0 || hwloc_topology_load(topology_) != 0) {
      hwloc_topology_destroy(topology_);
      FERRY_THROW("hwloc: cannot load this machine's topology");
    }
  }
  ~Topology() { hwloc_topology_destroy(topology_); }
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  hwloc_topology_t get() const { return topology_; }

 private:
  hwloc_topology_t topology_ = nullptr;
};

// The kernel's MemTotal; 0 when the system does not say.
int64_t kernel_total_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size : 0;
}

std::string format_gbps(double bytes_per_s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB/s", bytes_per_s / 1e9);
  return buf;
}

// Upper-case alphanumeric words: "NVIDIA GeForce RTX 3090 Ti" -> NVIDIA GEFORCE RTX 3090 TI. Matching whole
// words keeps "GH200" (a Grace Hopper superchip) from matching "H200".
std::vector<std::string> name_words(std::string_view name) {
  std::vector<std::string> words;
  std::string word;
  for (char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      word += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      words.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

bool contains_sequence(const std::vector<std::string>& words, const std::vector<std::string_view>& seq) {
  if (seq.size() > words.size()) return false;
  for (size_t i = 0; i + seq.size() <= words.size(); ++i) {
    if (std::equal(seq.begin(), seq.end(), words.begin() + static_cast<std::ptrdiff_t>(i))) return true;
  }
  return false;
}

const planner::GpuPreset& preset_named(std::string_view name) {
  for (const auto& p : planner::gpu_presets()) {
    if (p.name == name) return p;
  }
  FERRY_THROW("internal: no GPU preset named {}", name);
}

}  // namespace

std::optional<std::string> preset_for_device_name(std::string_view device_name) {
  struct Pattern {
    std::vector<std::string_view> words;
    std::string_view preset;
  };
  // More specific names first: "RTX 3090 Ti" also contains "RTX 3090". A bare "RTX 6000" is the Turing
  // Quadro, which has no preset.
  static const std::array<Pattern, 9> patterns = {{
      {{"RTX", "3090", "TI"}, "rtx3090ti"},
      {{"RTX", "3090"}, "rtx3090"},
      {{"RTX", "4090"}, "rtx4090"},
      {{"RTX", "5090"}, "rtx5090"},
      {{"RTX", "A6000"}, "a6000"},
      {{"RTX", "6000", "ADA"}, "rtx6000ada"},
      {{"RTX", "PRO", "6000"}, "rtxpro6000"},
      {{"H100"}, "h100"},
      {{"H200"}, "h200"},
  }};
  const auto words = name_words(device_name);
  if (std::find(words.begin(), words.end(), "LAPTOP") != words.end()) return std::nullopt;
  for (const auto& p : patterns) {
    if (contains_sequence(words, p.words)) return std::string(p.preset);
  }
  return std::nullopt;
}

planner::GpuSpec gpu_spec_from_report(int index, const DeviceReport& report, std::vector<std::string>& notes) {
  const std::string label = "cuda:" + std::to_string(index) + " (" + report.name + ")";
  planner::GpuSpec g;
  g.name = report.name;
  g.memory_bytes = report.memory_bytes;
  g.free_bytes = report.free_bytes;
  g.sm = report.sm;
  g.probed = true;

  // Without a datasheet, assume the reference workstation card, as `--gpu 24GiB` does.
  const auto preset_name = preset_for_device_name(report.name);
  const planner::GpuPreset& preset = preset_name ? preset_named(*preset_name) : planner::reference_gpu();
  g.bf16_tflops = preset.bf16_tflops;
  // No CUDA attribute gives the link generation, and the link trains down at idle, so the card's own generation
  // is the best guess for the slot.
  g.pcie = preset.pcie;
  if (!preset_name) {
    notes.push_back(label + " has no preset: assuming " + std::to_string(static_cast<int>(preset.bf16_tflops)) +
                    " BF16 TFLOPS and PCIe " + std::string(planner::pcie_name(preset.pcie)) + " (an " +
                    std::string(preset.name) + "'s)");
  }

  if (report.memory_bandwidth > 0) {
    g.memory_bandwidth = report.memory_bandwidth;
  } else {
    g.memory_bandwidth = preset.memory_bandwidth;
    notes.push_back(label + ": the driver reports no memory clock or bus width: assuming " +
                    format_gbps(preset.memory_bandwidth) + " (" + std::string(preset.name) + ")");
  }
  return g;
}

planner::HostSpec probe_host(std::vector<std::string>& notes) {
  // Disallowed NUMA nodes are kept in the topology so that a cpuset restriction can be told apart from hwloc
  // under-reporting memory; only the allowed ones are counted.
  Topology topology(HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED);
  hwloc_topology_t t = topology.get();
  hwloc_const_nodeset_t allowed_nodes = hwloc_topology_get_allowed_nodeset(t);

  planner::HostSpec host;
  int numa_nodes = 0;
  int64_t ram = 0;
  for (hwloc_obj_t node = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, nullptr); node != nullptr;
       node = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, node)) {
    if (!hwloc_bitmap_isset(allowed_nodes, node->os_index)) continue;
    ++numa_nodes;
    ram += static_cast<int64_t>(node->attr->numanode.local_memory);
  }
  host.numa_nodes = std::max(1, numa_nodes);
  if (ram == 0) ram = static_cast<int64_t>(hwloc_get_root_obj(t)->total_memory);

  // Some virtual machines (memory hot-plugged or initialised lazily) report far less per NUMA node than the
  // kernel's total. Unless this process is confined to some of the nodes, the kernel's total is what it can use.
  const bool confined = !hwloc_bitmap_isequal(allowed_nodes, hwloc_topology_get_topology_nodeset(t));
  const int64_t kernel_total = kernel_total_memory();
  if (!confined && kernel_total > 0 && std::abs(ram - kernel_total) > kernel_total / 100) {
    notes.push_back("hwloc reports " + core::format_bytes(ram) + " of RAM, the kernel " +
                    core::format_bytes(kernel_total) + ": using the kernel's total");
    ram = kernel_total;
  }
  FERRY_CHECK(ram > 0, "hwloc reports no memory size for this machine: give it with --host-ram");
  host.ram_bytes = ram;

  bool counted_hardware_threads = false;
  host.cores = allowed_physical_cores(&counted_hardware_threads);  // what the workers default to
  if (counted_hardware_threads)
    notes.push_back("hwloc reports no physical cores: counting " + std::to_string(host.cores) +
                    " hardware threads instead");

  host.memory_bandwidth = planner::kDefaultHostBandwidth;
  host.gflops_per_core = planner::kDefaultGflopsPerCore;
  notes.push_back("host memory bandwidth is not measured: assuming " + format_gbps(host.memory_bandwidth) +
                  " (set it with --host-bw)");
  host.probed = true;
  return host;
}

#ifndef FERRY_HAVE_CUDA
std::vector<planner::GpuSpec> probe_gpus(std::vector<std::string>& notes) {
  notes.push_back("ferry was built without CUDA: planning for the CPU only");
  return {};
}
#endif

ProbeResult probe_hardware() {
  ProbeResult result;
  planner::Hardware& hw = result.hardware;
  hw.source = "probed";
  hw.nodes = 1;
  hw.gpu_reserve_bytes = planner::kDefaultGpuReserve;
  hw.host_reserve_bytes = planner::kDefaultHostReserve;
  hw.host = probe_host(result.notes);
  hw.gpus = probe_gpus(result.notes);
  return result;
}

}  // namespace ferry::runtime
