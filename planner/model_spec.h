// planner::ModelSpec: a model's config plus its exact tensor list and the per-layer byte sums the
// placement solver works with. Built from a preset, a config.json, or a checkpoint directory (whose
// safetensors headers give the exact bytes of every tensor).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "planner/core/model_config.h"
#include "planner/core/tensor_table.h"

namespace ferry::planner {

using ClassBytes = std::array<int64_t, core::kNumWeightClasses>;

struct LayerWeights {
  ClassBytes bytes{};          // by class, routed experts included
  int64_t n_experts = 0;       // routed experts in this layer
  int64_t expert_bytes = 0;    // one routed expert (all its matrices and scales); the largest if they differ
  int64_t non_routed() const;  // everything but routed experts: what must sit where the layer's attention runs
};

enum class ModelSource : uint8_t { Preset, ConfigJson, Checkpoint };

struct ModelSpec {
  core::ModelConfig config;
  ModelSource source = ModelSource::Preset;
  std::string origin;  // preset name or path
  // The checkpoint's own tensors when read from headers; empty for a preset or config.json, whose tensors
  // core::make_tensor_inventory(config) lists on demand.
  std::vector<core::TensorInfo> tensors;
  int64_t tensor_count = 0;
  std::vector<LayerWeights> layers;  // config.n_layers_total() entries; MTP layers last
  ClassBytes global{};               // tensors outside layers: embedding, head, final norm, hc_head
  int64_t total_bytes = 0;           // as stored in the checkpoint (the per-class sums are held_bytes)
  int64_t missing_tensors = 0;       // Checkpoint: tensors the config implies but the headers lack
  int64_t unexpected_tensors = 0;    // Checkpoint: tensors the headers have but the config does not imply
  std::vector<std::string> notes;

  int64_t expert_bytes() const;                 // one routed expert of the first MoE layer
  int64_t bytes_of(core::WeightClass c) const;  // all layers + global
  int64_t mtp_bytes() const;                    // every tensor of the MTP layers
  int64_t held_bytes_total() const;             // all layers + global, as held (what placement distributes)
};

// Bytes the runtime holds for a tensor, as its format says (core::TensorFormat): its stored bytes, except that
// V4's small BF16 tensors (norm weights) are decoded to fp32 and its hash-routing tables narrowed to int32
// (runtime/model/model_weights.h). V3 checkpoints, which ferry plans but does not run, count as stored.
int64_t held_bytes(const core::TensorInfo& t, core::Arch arch);

// Per-layer and per-class byte sums of held_bytes, fed one tensor at a time.
class WeightTally {
 public:
  explicit WeightTally(ModelSpec& spec);
  void add(const core::TensorInfo& t);
  void finish();  // fills spec.layers[].n_experts and expert_bytes

 private:
  ModelSpec& spec_;
  std::vector<std::vector<int64_t>> expert_bytes_;  // [layer][expert]
};

ModelSpec spec_from_config(core::ModelConfig config, ModelSource source, std::string origin);

// `model` is a preset name, a path to a config.json, or a checkpoint directory (config.json + safetensors).
// Throws a one-line ferry::Error when it is none of these or cannot be read.
ModelSpec load_model_spec(const std::string& model);

}  // namespace ferry::planner
