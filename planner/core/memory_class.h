// The memory classes every planned and allocated byte belongs to: the planner tags each class of a device's
// plan with one (planner/use_class.h), the runtime's ledgers account allocations by them
// (runtime/backend/memory_ledger.h), and the memory report breaks each device down by them (llama.cpp's
// breakdown, with a planned column).
#pragma once

#include <string_view>

namespace ferry::core {

enum class MemoryClass { Weights, Kv, Indexer, Workspace, ExpertCache, Staging };
inline constexpr int kMemoryClasses = 6;
std::string_view memory_class_name(MemoryClass c);

}  // namespace ferry::core
