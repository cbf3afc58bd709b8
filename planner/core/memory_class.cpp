#include "planner/core/memory_class.h"

namespace ferry::core {

std::string_view memory_class_name(MemoryClass c) {
  switch (c) {
    case MemoryClass::Weights: return "weights";
    case MemoryClass::Kv: return "kv cache";
    case MemoryClass::Indexer: return "indexer";
    case MemoryClass::Workspace: return "workspace";
    case MemoryClass::ExpertCache: return "expert cache";
    case MemoryClass::Staging: return "staging";
  }
  return "?";
}

}  // namespace ferry::core
