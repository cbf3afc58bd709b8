// Every tensor a DeepSeek checkpoint holds, generated from its config: name, dtype, shape, bytes and class.
// The names, dtypes and packing follow ../shared/spec/deepseek-v4.md §4 (V4) and DeepSeek-V3's Hugging Face
// layout (V3, V3.2).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "planner/core/dtype.h"
#include "planner/core/model_config.h"

namespace ferry::core {

// What a weight is for. Placement and the memory report work by class.
enum class WeightClass : uint8_t {
  Attention,   // q/kv/o projections, attention sink (V4); MLA projections (V3)
  Compressor,  // V4 CSA/HCA KV compressors
  Indexer,     // lightning indexer (V4 CSA layers, V3.2)
  SharedExpert,
  Router,  // gate weight, bias, tid2eid
  RoutedExpert,
  DenseFfn,  // V3's leading dense layers
  Embedding,
  Head,
  Mhc,  // hyper-connection mixing (hc_*)
  Norm,
  MtpProjection,  // the MTP layer's e_proj/h_proj (V4) or eh_proj (V3)
  Other,          // a checkpoint tensor the config does not explain
  kCount
};
constexpr size_t kNumWeightClasses = static_cast<size_t>(WeightClass::kCount);
std::string_view weight_class_name(WeightClass c);

struct TensorInfo {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;  // as stored (FP4 experts: [out, in/2])
  int64_t bytes = 0;
  WeightClass cls = WeightClass::Other;
  int32_t layer = -1;   // -1: not in a layer (embedding, head, final norm); MTP layers follow the main layers
  int32_t expert = -1;  // routed expert id, else -1
};

// Every tensor, main layers then MTP layers then the global tensors, handed to `sink` one at a time: V4-Pro has
// 145,116 tensors, and planning only needs their sums, not a copy of each.
void for_each_tensor(const ModelConfig& c, const std::function<void(TensorInfo&&)>& sink);
// The full inventory as a list (inspect, validation, tests).
std::vector<TensorInfo> make_tensor_inventory(const ModelConfig& c);

}  // namespace ferry::core
