#include "planner/use_class.h"

#include <array>

namespace ferry::planner {
namespace {

using core::MemoryClass;

struct Table {
  std::array<UseClass, core::kNumWeightClasses> weights;
  std::array<UseClass, kNumKvKinds> kv;
  std::array<UseClass, 6> pools{{{"reserve", std::nullopt},
                                 {"workspace", MemoryClass::Workspace},
                                 {"expert_cache", MemoryClass::ExpertCache},
                                 {"expert_stream", MemoryClass::ExpertCache},
                                 {"staging", MemoryClass::Staging},
                                 {"kv_snapshots", std::nullopt}}};

  Table() {
    for (size_t k = 0; k < weights.size(); ++k)
      weights[k] = {"weights." + std::string(core::weight_class_name(static_cast<core::WeightClass>(k))),
                    MemoryClass::Weights};
    for (size_t k = 0; k < kv.size(); ++k) {
      const auto kind = static_cast<KvKind>(k);
      const bool indexer = kind == KvKind::CsaIndexer || kind == KvKind::MlaIndexer;
      kv[k] = {"kv." + std::string(kv_kind_name(kind)), indexer ? MemoryClass::Indexer : MemoryClass::Kv};
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

const UseClass& use_class(core::WeightClass c) { return table().weights.at(static_cast<size_t>(c)); }
const UseClass& use_class(KvKind k) { return table().kv.at(static_cast<size_t>(k)); }
const UseClass& use_class(Pool p) { return table().pools.at(static_cast<size_t>(p)); }

const UseClass* find_use_class(std::string_view name) {
  const Table& t = table();
  for (const UseClass& c : t.weights)
    if (c.name == name) return &c;
  for (const UseClass& c : t.kv)
    if (c.name == name) return &c;
  for (const UseClass& c : t.pools)
    if (c.name == name) return &c;
  return nullptr;
}

}  // namespace ferry::planner
