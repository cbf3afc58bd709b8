// The weights of a V4 checkpoint bound for the CPU forward pass: large matrices are views into the memory-
// mapped shards in their stored encodings (never dequantized); small vectors (norms, mHC mixing, sinks, biases,
// hash tables) are decoded once into float / int arrays. Which tensors there are, and where each goes, comes
// from the tensor table (planner/core/tensor_table.h). Every tensor is checked against it — name, dtype, shape —
// before anything runs, so a wrong or incomplete checkpoint fails at load with the tensor's name.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "planner/core/model_config.h"
#include "planner/core/tensor_table.h"
#include "runtime/backend/device_vector.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/kernels/cpu/linear.h"

namespace ferry::runtime {

struct HcWeights {  // one mHC mixing site: fn [(2+hc)·hc, hc·d] (head: [hc, hc·d]), base, scale
  DeviceVector<float> fn, base, scale;
};

struct CompressorWeights {
  core::WeightView wkv, wgate;  // [coff·D, d]
  DeviceVector<float> ape;      // [r, coff·D]
  DeviceVector<float> norm;     // [D]
};

struct ExpertWeights {
  core::WeightView w1, w2, w3;
};

struct LayerWeights {
  int64_t index = 0;  // layer number; num_hidden_layers for the MTP layer
  int64_t ratio = 0;  // compress ratio: 0, 4 or another (heavily compressed)
  bool hash_routed = false;
  std::string prefix;  // "layers.3." or "mtp.0."

  HcWeights hc_attn, hc_ffn;
  DeviceVector<float> attn_norm, ffn_norm;
  // attention
  core::WeightView wq_a, wq_b, wkv, wo_a, wo_b;
  DeviceVector<float> q_norm, kv_norm, attn_sink;
  std::optional<CompressorWeights> compressor;          // ratio > 0
  std::optional<CompressorWeights> indexer_compressor;  // ratio 4
  core::WeightView indexer_wq_b, indexer_weights_proj;  // ratio 4
  // MoE
  core::WeightView gate;          // [E, d]
  DeviceVector<float> gate_bias;  // score routing
  DeviceVector<int32_t> tid2eid;  // hash routing: [vocab, top-k]
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
  // MTP only
  core::WeightView e_proj, h_proj;
  DeviceVector<float> enorm, hnorm, mtp_norm;
  HcWeights hc_head;
};

class ModelWeights {
 public:
  // Opens the checkpoint and binds every tensor the config requires. Throws ferry::Error naming the first
  // missing or mismatched tensor.
  static ModelWeights load(const std::filesystem::path& dir);

  const core::ModelConfig& config() const { return config_; }
  const LayerWeights& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }
  const LayerWeights* mtp() const { return mtp_ ? &*mtp_ : nullptr; }
  const core::WeightView& embed() const { return embed_; }  // BF16 [vocab, d]
  const core::WeightView& head() const { return head_; }    // BF16 [vocab, d]
  const DeviceVector<float>& norm() const { return norm_; }
  const HcWeights& hc_head() const { return hc_head_; }
  // Bytes of the checkpoint tensors this model reads (for the memory report).
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes held for one class of weights, measured on what was bound: matrices as stored, small tensors as
  // decoded (fp32, int32). planner::ModelSpec::bytes_of plans the same figure.
  int64_t bytes_of(core::WeightClass c) const { return class_bytes_[static_cast<size_t>(c)]; }
  // Decoded copy of one embedding row.
  void embed_row(int64_t token, float* out) const;

  // For binding a Plan (runtime/model/weight_placement.h): a copy of the weights re-points these at device copies.
  LayerWeights& layer_to_place(int64_t i) { return layers_[static_cast<size_t>(i)]; }
  LayerWeights* mtp_to_place() { return mtp_ ? &*mtp_ : nullptr; }
  core::WeightView& head_to_place() { return head_; }
  DeviceVector<float>& norm_to_place() { return norm_; }
  HcWeights& hc_head_to_place() { return hc_head_; }

 private:
  core::ModelConfig config_;
  std::shared_ptr<Checkpoint> ckpt_;
  std::vector<LayerWeights> layers_;
  std::optional<LayerWeights> mtp_;
  core::WeightView embed_, head_;
  DeviceVector<float> norm_;
  HcWeights hc_head_;
  int64_t weight_bytes_ = 0;
  std::array<int64_t, core::kNumWeightClasses> class_bytes_{};
  // Copies of BF16/F32 tensors the checkpoint stores at an address unsuitable for direct use (misaligned).
  std::vector<std::vector<uint8_t>> owned_;

  friend class WeightBinder;
};

}  // namespace ferry::runtime
