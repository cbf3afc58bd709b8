// The offload scenarios of the tiny model shared by the simulated device's tests (test_offload.cpp) and their
// CUDA twins (tests/gpu/test_offload_cuda.cpp): the session, the CPU-only logits they are held to, the device
// budget and the host, and the check that every device stays within its plan.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "forward_check.h"
#include "offload/device_plan.h"
#include "offload/host_expert_store.h"
#include "offload/plan_binding.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/generate/generate.h"

namespace ferry::testing {

constexpr int64_t kPrompt = 200, kGenerate = 16;

inline runtime::SessionOptions session_options(planner::KvType kv, int64_t ubatch) {
  runtime::SessionOptions so;
  so.ctx = 512;
  so.kv_type = kv;
  so.ubatch = ubatch;
  return so;
}

// Greedy generation of `n` tokens past EOS, every position's logits kept.
inline runtime::GenerateOptions logits_of(int64_t n = kGenerate) {
  runtime::GenerateOptions go;
  go.n_predict = n;
  go.stop_at_eos = false;
  go.keep_logits = true;
  return go;
}

inline std::vector<float> run_logits(const runtime::ModelWeights& m, const runtime::SessionOptions& so) {
  runtime::Session s(m, so);
  return runtime::generate(s, prompt_tokens(kPrompt), logits_of()).logits;
}

inline const std::vector<float>& cpu_logits(planner::KvType kv, int64_t ubatch) {
  static std::map<std::pair<int, int64_t>, std::vector<float>> memo;
  auto& v = memo[{static_cast<int>(kv), ubatch}];
  if (v.empty()) v = run_logits(tiny_model(), session_options(kv, ubatch));
  return v;
}

constexpr double kLinkBytesPerS = 25e9;

// A simulated device of `capacity` bytes ("sim:" + `size`) keeping `cache_slots` experts a MoE layer.
inline offload::DeviceRequest sim_request(const std::string& size, int64_t capacity, int64_t cache_slots) {
  offload::DeviceRequest req;
  req.name = "sim:" + size;
  req.capacity = capacity;
  req.link_bytes_per_s = kLinkBytesPerS;
  req.cache_slots = cache_slots;
  return req;
}

inline planner::HostSpec host_spec(int numa_nodes = 1) {
  planner::HostSpec h;
  h.numa_nodes = numa_nodes;
  h.ram_bytes = int64_t{64} << 30;
  h.memory_bandwidth = 50e9;
  h.cores = 2;
  h.gflops_per_core = 40;
  return h;
}

struct Scenario {
  const char* name;
  int64_t capacity;
  int64_t cache_slots;  // -1: what the planner leaves
  int64_t stream_min_tokens;
  int64_t ubatch = 512;
  int numa = 1;  // NUMA nodes the plan is made for
  offload::HostExperts host_experts = offload::HostExperts::Mmap;
};

// Every device's high-water mark is within its plan, class by class (a class another lent to, within the most
// it was planned), and in all within 2% of it; each host node holds
// exactly the weights the plan gives it: its share of the routed experts (and, on node 0, the embedding).
// The host backends a plan's NUMA devices need, as BoundPlan takes them, and the plans of those devices.
struct PlanHosts {
  std::vector<std::unique_ptr<runtime::cpu::CpuBackend>> backends;
  std::vector<runtime::Backend*> ptrs;
  std::vector<const planner::DevicePlan*> plans;
};

inline PlanHosts plan_hosts(const planner::Plan& plan) {
  PlanHosts h;
  h.backends = offload::make_host_backends(plan);
  for (const auto& b : h.backends) h.ptrs.push_back(b.get());
  for (const auto& dp : plan.devices)
    if (dp.kind == planner::DeviceKind::Host) h.plans.push_back(&dp);
  return h;
}

inline void expect_within_plan(const runtime::Backend& gpu,
                               const std::vector<std::unique_ptr<runtime::cpu::CpuBackend>>& hosts,
                               const std::vector<const planner::DevicePlan*>& host_plans) {
  std::vector<const runtime::Backend*> devices{&gpu};
  for (const auto& h : hosts) devices.push_back(h.get());
  for (const runtime::Backend* b : devices) {
    int64_t planned = 0;
    for (int i = 0; i < runtime::kMemoryClasses; ++i) {
      const auto u = b->ledger().usage(static_cast<runtime::MemoryClass>(i));
      EXPECT_LE(u.high_water, u.planned_high)
          << b->name() << " " << runtime::memory_class_name(static_cast<runtime::MemoryClass>(i));
      planned += u.planned;
    }
    const int64_t high = b->ledger().total_high_water();
    EXPECT_LE(high, planned) << b->name();
    EXPECT_GE(static_cast<double>(high), 0.98 * static_cast<double>(planned))
        << b->name() << ": high-water " << high << " of " << planned << " planned";
  }
  for (size_t k = 0; k < hosts.size(); ++k) {
    const int64_t planned =
        offload::planned_by_class(*host_plans[k])[static_cast<size_t>(runtime::MemoryClass::Weights)];
    EXPECT_GT(planned, 0) << host_plans[k]->id;
    EXPECT_EQ(hosts[k]->ledger().usage(runtime::MemoryClass::Weights).high_water, planned) << host_plans[k]->id;
  }
}

}  // namespace ferry::testing
