// The classes of a device's planned bytes (docs/plan-schema.md, "Memory classes") in one table: each class's
// name in the plan and the ledger class (core::MemoryClass) the runtime reserves those bytes as. The placer
// tags every byte it places with its class, so that the binding sums ledger classes without reading names.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "planner/core/memory_class.h"
#include "planner/core/tensor_table.h"
#include "planner/kv_cache.h"

namespace ferry::planner {

struct UseClass {
  std::string name;                         // "weights.attention", "kv.csa_indexer", "expert_stream", "reserve"
  std::optional<core::MemoryClass> ledger;  // nullopt: "reserve", memory left to the driver or the OS
  bool operator==(const UseClass&) const = default;
};

// The planned buffers that are neither weights nor KV.
// Snapshots: prefix-reuse copies of each sequence's window and compressor state, in plain host memory (no ledger).
enum class Pool : uint8_t { Reserve, Workspace, ExpertCache, ExpertStream, Staging, Snapshots };

const UseClass& use_class(core::WeightClass c);  // "weights.<class>", ledger Weights
const UseClass& use_class(KvKind k);             // "kv.<kind>", ledger Kv (Indexer for the indexer keys)
const UseClass& use_class(Pool p);
// The class named exactly `name` (reading a plan file); nullptr when there is none.
const UseClass* find_use_class(std::string_view name);

}  // namespace ferry::planner
