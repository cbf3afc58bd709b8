#include "planner/hardware.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "planner/core/error.h"
#include "planner/core/units.h"

namespace ferry::planner {

std::string_view pcie_name(PcieGen g) {
  switch (g) {
    case PcieGen::Gen3: return "gen3";
    case PcieGen::Gen4: return "gen4";
    case PcieGen::Gen5: return "gen5";
  }
  return "?";
}

PcieGen parse_pcie(std::string_view text) {
  if (text == "gen3" || text == "3") return PcieGen::Gen3;
  if (text == "gen4" || text == "4") return PcieGen::Gen4;
  if (text == "gen5" || text == "5") return PcieGen::Gen5;
  FERRY_THROW("invalid --pcie '{}': expected gen3, gen4 or gen5", text);
}

double pcie_h2d_bandwidth(PcieGen g) {
  switch (g) {
    case PcieGen::Gen3: return 12e9;
    case PcieGen::Gen4: return 25e9;
    case PcieGen::Gen5: return 52e9;
  }
  return 25e9;
}

const std::vector<GpuPreset>& gpu_presets() {
  // Memory, bandwidth and link: ../shared/spec/hardware.md. BF16 tensor TFLOPS (dense, FP32 accumulate) from
  // NVIDIA's architecture whitepapers and datasheets; GeForce cards run FP32-accumulate at half rate.
  static const std::vector<GpuPreset> presets = {
      {"rtx3090", 24 * core::kGiB, 936e9, 71, PcieGen::Gen4, "sm_86"},
      {"rtx3090ti", 24 * core::kGiB, 1008e9, 80, PcieGen::Gen4, "sm_86"},
      {"rtx4090", 24 * core::kGiB, 1008e9, 165, PcieGen::Gen4, "sm_89"},
      {"rtx5090", 32 * core::kGiB, 1792e9, 210, PcieGen::Gen5, "sm_120"},
      {"a6000", 48 * core::kGiB, 768e9, 155, PcieGen::Gen4, "sm_86"},
      {"rtx6000ada", 48 * core::kGiB, 960e9, 364, PcieGen::Gen4, "sm_89"},
      {"rtxpro6000", 96 * core::kGiB, 1792e9, 500, PcieGen::Gen5, "sm_120"},
      {"h100", 80 * core::kGiB, 3350e9, 989, PcieGen::Gen5, "sm_90"},
      {"h200", 141 * core::kGiB, 4800e9, 989, PcieGen::Gen5, "sm_90"},
  };
  return presets;
}

const GpuPreset& reference_gpu() {
  static const GpuPreset& ref =
      *std::find_if(gpu_presets().begin(), gpu_presets().end(), [](const GpuPreset& p) { return p.name == "rtx3090"; });
  return ref;
}

GpuSpec parse_gpu_spec(std::string_view text) {
  std::string_view name = text;
  std::string_view cap;
  if (auto colon = text.find(':'); colon != std::string_view::npos) {
    name = text.substr(0, colon);
    cap = text.substr(colon + 1);
  }
  GpuSpec g;
  bool found = false;
  for (const auto& p : gpu_presets()) {
    if (p.name == name) {
      g.name = std::string(p.name);
      g.memory_bytes = p.memory_bytes;
      g.memory_bandwidth = p.memory_bandwidth;
      g.bf16_tflops = p.bf16_tflops;
      g.pcie = p.pcie;
      g.sm = std::string(p.sm);
      found = true;
      break;
    }
  }
  if (!found) {
    const bool looks_like_size = !name.empty() && (std::isdigit(static_cast<unsigned char>(name[0])) || name[0] == '.');
    if (!looks_like_size || !cap.empty()) {
      std::string known;
      for (const auto& p : gpu_presets()) known += (known.empty() ? "" : ", ") + std::string(p.name);
      FERRY_THROW("unknown GPU '{}' (known: {}; or a size such as 24GiB)", text, known);
    }
    // A card we have no datasheet for: assume the reference workstation card's speeds.
    g.name = "custom";
    g.memory_bytes = core::parse_size(name, "GPU memory");
    g.memory_bandwidth = reference_gpu().memory_bandwidth;
    g.bf16_tflops = reference_gpu().bf16_tflops;
    g.pcie = reference_gpu().pcie;
  }
  if (!cap.empty()) {
    const int64_t limit = core::parse_size(cap, "GPU memory limit");
    if (limit > g.memory_bytes)
      FERRY_THROW("GPU memory limit {} exceeds {}'s {}", cap, g.name, core::format_bytes(g.memory_bytes));
    g.memory_bytes = limit;
  }
  g.free_bytes = g.memory_bytes;
  return g;
}

std::string describe(const Hardware& hw) {
  std::string out;
  char buf[256];
  if (hw.gpus.empty()) {
    out = "no GPU";
  } else {
    // Group identical consecutive GPUs: "2x rtx3090".
    for (size_t i = 0; i < hw.gpus.size();) {
      size_t j = i;
      while (j < hw.gpus.size() && hw.gpus[j].name == hw.gpus[i].name && hw.gpus[j].free_bytes == hw.gpus[i].free_bytes)
        ++j;
      const auto& g = hw.gpus[i];
      std::snprintf(buf, sizeof buf, "%s%zux %s (%s, %.0f GB/s, PCIe %s)", out.empty() ? "" : " + ", j - i,
                    g.name.c_str(), core::format_bytes(g.free_bytes).c_str(), g.memory_bandwidth / 1e9,
                    std::string(pcie_name(g.pcie)).c_str());
      out += buf;
      i = j;
    }
  }
  std::snprintf(buf, sizeof buf, ", %s RAM @ %.1f GB/s, %d NUMA node%s, %d cores",
                core::format_bytes(hw.host.ram_bytes).c_str(), hw.host.memory_bandwidth / 1e9, hw.host.numa_nodes,
                hw.host.numa_nodes == 1 ? "" : "s", hw.host.cores);
  out += buf;
  if (hw.nodes > 1) {
    std::snprintf(buf, sizeof buf, "; %d identical nodes (%.1f GB/s, %.0f us link)", hw.nodes,
                  hw.network.bandwidth / 1e9, hw.network.latency_s * 1e6);
    out += buf;
  }
  return out;
}

}  // namespace ferry::planner
