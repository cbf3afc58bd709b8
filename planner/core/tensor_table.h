// The one description of a DeepSeek checkpoint's tensors, generated from its config: every weight's name,
// shape, storage format, memory class and (V4) the slot the runtime binds it to. The planner sums it,
// `ferry inspect` checks checkpoints against it, `ferry make-tiny` writes it, and the weight binder
// (runtime/model/model_weights.cpp) walks it. Names, dtypes and packing follow ../shared/spec/deepseek-v4.md §4
// (V4) and DeepSeek-V3's Hugging Face layout (V3, V3.2).
#pragma once

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

// How a weight is stored, which fixes its checkpoint tensors and how the runtime holds it.
enum class TensorFormat : uint8_t {
  Fp8Linear,    // F8_E4M3 `<p>.weight` [out, in] + one scale per 128x128 block: F8_E8M0 `<p>.scale` (V4) or F32
                // `<p>.weight_scale_inv` (V3); used in place
  Mxfp4Linear,  // V4 routed experts: I8 `<p>.weight` [out, in/2], two E2M1 per byte along `in`, + F8_E8M0
                // `<p>.scale` [out, in/32]; used in place
  Bf16Matrix,   // BF16 [rows, cols], used in place (embedding, head, router, compressor projections)
  SmallBf16,    // BF16 vector decoded to fp32 at load (norm weights)
  SmallF32,     // F32 tensor read as fp32 (mHC mixing, attention sinks, router biases, compressor positions)
  HashTable,    // I64 [vocab, top-k] token -> expert ids (hash routing), narrowed to int32 at load
  Unexplained,  // a checkpoint tensor the config does not explain (never in the table; planner bookkeeping)
};

// Where the V4 weight binder puts a weight: one field of runtime::LayerWeights (layer rows) or of
// runtime::ModelWeights (global rows; the MTP layer's hc_head uses the same roles). V3 rows have role None:
// ferry plans V3 checkpoints but does not run them.
enum class TensorRole : uint8_t {
  None,
  // mHC mixing sites
  HcAttnFn,
  HcAttnBase,
  HcAttnScale,
  HcFfnFn,
  HcFfnBase,
  HcFfnScale,
  HcHeadFn,
  HcHeadBase,
  HcHeadScale,
  // block norms
  AttnNorm,
  FfnNorm,
  // attention
  WqA,
  QNorm,
  WqB,
  Wkv,
  KvNorm,
  WoA,
  WoB,
  AttnSink,
  // KV compressor (ratio > 0) and the indexer's (ratio 4)
  CompressorWkv,
  CompressorWgate,
  CompressorApe,
  CompressorNorm,
  IndexerWqB,
  IndexerWeightsProj,
  IndexerCompressorWkv,
  IndexerCompressorWgate,
  IndexerCompressorApe,
  IndexerCompressorNorm,
  // MoE
  Gate,
  GateBias,
  Tid2eid,
  ExpertW1,  // routed expert `expert`
  ExpertW2,
  ExpertW3,
  SharedW1,
  SharedW2,
  SharedW3,
  // MTP layer
  EProj,
  HProj,
  ENorm,
  HNorm,
  MtpNorm,
  // global
  Embed,
  Head,
  FinalNorm,
};

// One row of the table: a weight of the model.
struct TensorSpec {
  std::string name;  // its checkpoint tensor; a linear's scale tensor sits beside it (scale_tensor_name)
  TensorFormat format = TensorFormat::Bf16Matrix;
  std::vector<int64_t> shape;  // logical: a linear's [out, in] (unpacked), else as stored
  WeightClass cls = WeightClass::Other;
  TensorRole role = TensorRole::None;
  int32_t layer = -1;   // -1: not in a layer (embedding, head, final norm); MTP layers follow the main layers
  int32_t expert = -1;  // routed expert id, else -1
};

// One checkpoint tensor, as the table implies it or as a checkpoint's header gives it.
struct TensorInfo {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;  // as stored (FP4 experts: [out, in/2])
  int64_t bytes = 0;
  WeightClass cls = WeightClass::Other;
  int32_t layer = -1;   // -1: not in a layer (embedding, head, final norm); MTP layers follow the main layers
  int32_t expert = -1;  // routed expert id, else -1
  TensorFormat format = TensorFormat::Unexplained;  // of the weight it stores (a linear's scales: the linear's)
};

// The names of layer `layer`'s tensors begin with this: "layers.3.", "mtp.0." (V4), "model.layers.3." (V3).
std::string layer_prefix(const ModelConfig& c, int64_t layer);

// The rows of layer `layer` (in [0, n_layers_total())), of the tensors outside layers, or of the whole model
// (main layers, MTP layers, then the global rows), handed to `sink` one at a time: V4-Pro has 73,164 weights
// and planning only needs their sums.
void for_each_layer_weight(const ModelConfig& c, int64_t layer, const std::function<void(TensorSpec&&)>& sink);
void for_each_global_weight(const ModelConfig& c, const std::function<void(TensorSpec&&)>& sink);
void for_each_weight(const ModelConfig& c, const std::function<void(TensorSpec&&)>& sink);

// The checkpoint tensors that store a weight: the weight's own, then a linear's scales.
std::vector<TensorInfo> stored_tensors(const ModelConfig& c, const TensorSpec& w);
std::string scale_tensor_name(const ModelConfig& c, const TensorSpec& w);  // a linear's scale tensor

// Every checkpoint tensor of the model in checkpoint order, one at a time (planning), or as a list (inspect,
// validation, tests).
void for_each_tensor(const ModelConfig& c, const std::function<void(TensorInfo&&)>& sink);
std::vector<TensorInfo> make_tensor_inventory(const ModelConfig& c);

}  // namespace ferry::core
