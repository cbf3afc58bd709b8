// The host backend: the CPU's RAM, accounted by class like any device, and its cores, which compute every op in
// the caller (host_ops.h) — on one NUMA node's threads for the host backend of that node. Copies into it are
// plain memcpy and complete before copy_to_device returns.
#pragma once

#include <string>
#include <utility>

#include "runtime/backend/backend.h"
#include "runtime/backend/numa_arenas.h"

namespace ferry::runtime::cpu {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(int64_t capacity = MemoryLedger::kUnplanned) : Backend("host", capacity) {}
  // One per NUMA node of a plan, named as the plan's device ("host.numa1"), computing on the threads of machine
  // NUMA node `numa_node` (-1: the caller's).
  explicit CpuBackend(std::string name, int64_t capacity = MemoryLedger::kUnplanned, int numa_node = -1)
      : Backend(std::move(name), capacity), arena_(numa_node) {}
  int numa_node() const { return arena_.node(); }
  bool host_addressable() const override { return true; }
  bool holds(const void*) const override { return true; }
  // Every op, computed in the caller with the CPU kernels (host_ops.h); the event is complete on return.
  bool supports(ops::Kind) const override { return true; }
  ComputeEvent run(const ops::Op& op, CopyEvent after = {}, DeviceRange reads = {}) override;
  CopyEvent copy_to_device(DeviceBuffer& dst, int64_t offset, const void* src, int64_t bytes) override;
  using Backend::completed;
  using Backend::wait;
  bool completed(CopyEvent) const override { return true; }
  void wait(CopyEvent, std::chrono::milliseconds = std::chrono::seconds(60)) const override {}

 protected:
  void* raw_allocate(int64_t bytes) override;
  void raw_free(void* p, int64_t bytes) override;

 private:
  NumaArena arena_;
};

}  // namespace ferry::runtime::cpu
